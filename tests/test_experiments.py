"""The scripts in experiments/ run end to end (small sizes) and write what they say they write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


HANG_GUARD_S = 30 * 60
"""Only a guard against a hung script: the scripts' run time depends on the machine's load, and
a test asserts what they write, never how fast."""


def run(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(REPO / "experiments" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_following_curve_script(tmp_path):
    out = run("following_curve.py", "--n-per-cell", "1", "--out", str(tmp_path / "curve.png"), cwd=tmp_path)
    assert "56 conflict cases" in out and "balance point" in out
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_oscillation_sweep_script(tmp_path):
    # 3 groups per cell: with 1 (20 kept cases) the 4-layer model shipped until 2026-12-07
    # separated text from image perfectly, and the script rightly stopped: no balance point
    out = run("oscillation_sweep.py", "--n-per-cell", "3", cwd=tmp_path)
    assert "oscillation" in out.lower()


def test_activation_patching_script_with_effects(tmp_path):
    out = run("activation_patching.py", "--model", "tiny:llava", "--out", str(tmp_path / "p"), "--n-cases", "24",
              "--effects", "--n-effect-cases", "24", "--steer-groups", "1", "--alpha", "0.3", "--lever", "0.3",
              "--steer-positions", "3", cwd=tmp_path)
    assert "steering at layers" in out
    effects = json.loads((tmp_path / "p" / "effects.json").read_text())
    assert {"image_swap", "knockout", "read_timing", "steering_instruction", "steering_relevance",
            "lever"} <= set(effects)
    timing = effects["read_timing"]["rows"]  # each key group blocked in layer 0, 1, 2, 3 alone, then in all
    assert [(r["keys"], r["layers"]) for r in timing] == [(k, w) for k in ("context", "image")
                                                          for w in ([0], [1], [2], [3], [0, 1, 2, 3])]
    lever = effects["lever"]["layers"]
    assert [entry["layer"] for entry in lever] == [0, 1, 2, 3]
    assert all(-1 <= entry["cosine_mc2"] <= 1 and [r["alpha"] for r in entry["report"]["rows"]] == [-1, -0.5, 0, 0.5, 1]
               for entry in lever)
    assert effects["steering_instruction"]["positions"] == effects["steering_relevance"]["positions"] == 3
    windows = effects["steering_instruction"]["windows"]
    assert [w["layers"] for w in windows] == [[0, 1], [2, 3], [0, 1, 2, 3]]  # tiny:llava: 4 decoder layers
    assert all(len(w["rows"]) == 3 for w in windows)  # -0.3, 0, +0.3
    for name in ("patching.png", "patching.json", "patching.npz"):
        assert (tmp_path / "p" / name).stat().st_size > 0


@pytest.mark.parametrize("args, message", [(["--lever", "0.3"], "add --effects"),
                                           (["--steer-positions", "2", "--steer-where", "all"], "--steer-where answer")])
def test_activation_patching_refuses_bad_option_combinations(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "activation_patching.py"), "--out",
                           str(tmp_path / "p"), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "p").exists()


def test_a_training_record_from_before_a_setting_existed_reads_as_it_was_trained(tmp_path):
    """training.json files written before `instruction_placement` / `local_layers` existed
    describe full-attention models trained with the instruction before the question, whatever
    today's defaults are; a record that names them keeps its values."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from train_tiny_vlm import read_record
    finally:
        sys.path.remove(str(REPO / "experiments"))
    old_record = {"config": {"seed": 3, "text_reliability": [0.9, 0.8, 0.7, 0.6]}}
    (tmp_path / "training.json").write_text(json.dumps(old_record))
    _, old = read_record(tmp_path)
    assert (old.seed, old.instruction_placement, old.local_layers) == (3, "question", 0)
    assert (old.read_share, old.shape_share, old.n_shape_scenes) == (0.0, 0.0, 0)  # no reading or shape task then
    assert old.text_reliability == (0.9, 0.8, 0.7, 0.6)
    (tmp_path / "training.json").write_text(json.dumps({"config": {"instruction_placement": "end", "local_layers": 1}}))
    _, new = read_record(tmp_path)
    assert (new.instruction_placement, new.local_layers) == ("end", 1)


def test_compare_tiny_recipes_trains_a_few_steps_and_reports_every_check(tmp_path):
    tiny = {"n_scenes": 28, "n_shape_scenes": 8, "shape_share": 0.2, "read_share": 0.1, "text_layers": 2,
            "vision_layers": 1, "text_hidden": 32, "vision_hidden": 32, "text_intermediate": 64, "batch_size": 8,
            "warmup": 1, "threads": 1}
    out = run("compare_tiny_recipes.py", "smoke", json.dumps(tiny), "--steps", "2", "--out", str(tmp_path), cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "smoke.json").read_text())
    assert len(result["vision_tiers"]) == 14 and len(result["shape_tiers"]) == 4 and len(result["loss"]) == 1
    # 24 scenes per tier, 32 per shape tier, 18 words, 60 contexts: every share is a count over those
    def counts(share: float, n: int) -> bool:
        return 0 <= share <= 1 and abs(share * n - round(share * n)) < 1e-9

    assert all(counts(a, 24) for a in result["vision_tiers"]) and all(counts(a, 32) for a in result["shape_tiers"])
    assert counts(result["word_t0"], 18) and counts(result["context_read"], 60)
    assert (tmp_path / "smoke_model" / "config.json").is_file()


def test_tower_probe_script(tmp_path):
    out = run("probe_tower.py", "--steps", "2", "--every", "1", "--batch", "4", "--aux", "1.0",
              "--vision-hidden", "32", "--vision-layers", "2", cwd=tmp_path)
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and "mean of tiers 1-6" in lines[-1]
    result = json.loads(out.splitlines()[-1])
    assert result["steps"] == 2 and sorted(result["accuracy"]) == [str(t) for t in range(7)]
    assert all(0 <= a <= 1 for a in result["accuracy"].values())


def test_tower_probe_script_takes_another_resolution_and_refuses_bad_sizes(tmp_path):
    out = run("probe_tower.py", "--steps", "1", "--every", "1", "--batch", "4", "--aux", "1.0", "--image-size", "48",
              "--patch-size", "12", "--vision-hidden", "32", "--vision-layers", "2", cwd=tmp_path)
    result = json.loads(out.splitlines()[-1])
    assert (result["image_size"], result["patch_size"]) == (48, 12)
    bad = subprocess.run([sys.executable, str(REPO / "experiments" / "probe_tower.py"), "--image-size", "64",
                          "--patch-size", "12"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "patch_size 12 does not divide image_size 64" in bad.stderr
    frozen = subprocess.run([sys.executable, str(REPO / "experiments" / "probe_tower.py"), "--frozen",
                             str(REPO / "data" / "tiny_vlm"), "--patch-size", "4"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert frozen.returncode == 2 and "with --frozen the model's own tower sets both" in frozen.stderr


def test_tower_probe_script_probes_a_trained_models_frozen_tower(tmp_path):
    out = run("probe_tower.py", "--frozen", str(REPO / "data" / "tiny_vlm"), "--steps", "2", "--every", "1",
              "--batch", "4", "--pool", "28", cwd=tmp_path)
    assert len([line for line in out.splitlines() if line.startswith("step ")]) == 2
    result = json.loads(out.splitlines()[-1])
    assert sorted(result["accuracy"]["colour"]) == [str(t) for t in range(7)]
    assert sorted(result["accuracy"]["shape"]) == [str(t) for t in range(4)]
    assert all(0 <= a <= 1 for task in result["accuracy"].values() for a in task.values())


def test_train_script_sets_any_config_field_with_its_type():
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from train_tiny_vlm import build_parser
    finally:
        sys.path.remove(str(REPO / "experiments"))
    args = build_parser().parse_args(["--set", "lr=5e-4", "--set", "mix=0.6,0.2,0.2", "--set", "pretrain_steps=7",
                                      "--set", "instruction_placement=question"])
    assert dict(args.set) == {"lr": 0.0005, "mix": (0.6, 0.2, 0.2), "pretrain_steps": 7,
                              "instruction_placement": "question"}
    assert isinstance(dict(args.set)["pretrain_steps"], int)
    for bad, says in (("learning_rate=1", "FIELD one of"), ("steps=many", "'many' is not of type int"), ("lr", "FIELD=VALUE")):
        done = subprocess.run([sys.executable, str(REPO / "experiments" / "train_tiny_vlm.py"), "--set", bad],
                              capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert done.returncode == 2 and says in done.stderr, done.stderr



def test_train_script_refuses_a_recipe_train_would_refuse_before_any_work(tmp_path, capsys):
    """Each setting below makes `train` raise; the script says so as a usage error (exit 2, the
    field and the fix named) before drawing a scene, and writes nothing to --out. On `--recipe
    base` (the 4-layer recipe without the extra stages), where each setting alone is refused."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from train_tiny_vlm import main
    finally:
        sys.path.remove(str(REPO / "experiments"))
    out = tmp_path / "model"
    for sets, says in ((["patch_size=12"], "patch_size 12 does not divide image_size 64"),
                       (["local_layers=4"], "local_layers must leave at least one full-attention layer"),
                       (["asked_only_steps=5"], "it needs asked_loss > 0"),
                       (["projector_from_reader=true"], "it needs pretrain_steps > 0"),
                       (["pretrain_steps=3"], "set n_shape_scenes > 0, or pretrain_steps=0"),
                       (["read_share=0.7", "shape_share=0.5"], "sum to at most 1")):
        with pytest.raises(SystemExit) as exit_:
            main(["--out", str(out), "--recipe", "base", *[a for s in sets for a in ("--set", s)]])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, err
        assert not out.exists()

def test_train_script_refuses_a_context_stage_it_cannot_continue(tmp_path, capsys):
    """`--context-from DIR` needs a recipe with a context stage and a DIR this script wrote with
    the same recipe and none; each miss is a usage error naming it, before any work."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from train_tiny_vlm import main
    finally:
        sys.path.remove(str(REPO / "experiments"))
    from modality_lens.tiny_vlm import DEFAULT_DIR

    out = tmp_path / "model"
    (tmp_path / "empty").mkdir()
    for argv, says in ((["--context-from", str(DEFAULT_DIR), "--set", "context_steps=0"], "context_steps > 0"),
                       (["--context-from", str(tmp_path / "empty"), "--set", "context_steps=5"], "no training.json"),
                       (["--context-from", str(DEFAULT_DIR), "--set", "context_steps=5", "--set", "seed=3"],
                        "it differs in seed")):
        with pytest.raises(SystemExit) as exit_:
            main(["--out", str(out), *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, err
        assert not out.exists()


def test_train_script_starts_from_the_shipped_recipe_and_its_card_command_reproduces_a_config():
    """No option: SHIPPED_RECIPE (the recipe data/tiny_vlm's training.json records); `--recipe
    deep` / `base`: DEEP_RECIPE / TinyVLMConfig's defaults; options and --set on top. The card's
    reproduce command, parsed again, gives back the config it was written for."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from train_tiny_vlm import build_parser, config_from_args, read_record, reproduce_command
    finally:
        sys.path.remove(str(REPO / "experiments"))
    from modality_lens.tiny_vlm import DEEP_RECIPE, DEFAULT_DIR, SHIPPED_RECIPE, TinyVLMConfig

    parse = lambda argv: config_from_args(build_parser().parse_args(argv))  # noqa: E731
    shipped = TinyVLMConfig(**SHIPPED_RECIPE)
    assert parse([]) == shipped == read_record(DEFAULT_DIR)[1] and parse(["--recipe", "base"]) == TinyVLMConfig()
    deep = TinyVLMConfig(**DEEP_RECIPE)
    assert parse(["--recipe", "deep"]) == deep and deep.text_layers == 8
    assert parse(["--recipe", "base", "--steps", "7", "--text-reliability", "0.9", "0.8", "0.7", "0.6"]) == \
        TinyVLMConfig(steps=7, text_reliability=(0.9, 0.8, 0.7, 0.6))
    assert parse(["--text-layers", "6", "--set", "text_layers=5"]).text_layers == 5  # --set comes last
    other = TinyVLMConfig(**{**DEEP_RECIPE, "seed": 3, "mix": (0.6, 0.2, 0.2), "projector_from_reader": False,
                             "instruction_placement": "question", "lr": 5e-4})
    for cfg in (shipped, deep, other, TinyVLMConfig(), TinyVLMConfig(seed=2, text_layers=6)):
        command = reproduce_command(cfg).split()
        assert command[:2] == ["python", "experiments/train_tiny_vlm.py"]
        assert parse(command[2:]) == cfg
    assert reproduce_command(shipped) == "python experiments/train_tiny_vlm.py"
    assert reproduce_command(deep) == "python experiments/train_tiny_vlm.py --recipe deep"


def test_render_benchmark_script_compares_the_same_pixels(tmp_path):
    """The script checks that both caches draw identical images (it exits non-zero if not) and
    ends with the JSON of its ratios."""
    out = run("benchmark_render.py", "--words", "8", "--rounds", "2", cwd=tmp_path)
    last = json.loads(out.strip().splitlines()[-1])
    assert last["words"] == 8 and last["rounds"] == 2 and last["min"] <= last["speedup"] <= last["max"]
