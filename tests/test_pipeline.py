"""The main job end to end on a tiny model: rows, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from interp.errors import CaseError, ModalityLensError

RUN_ARGS = ["--model", "tiny:llava", "--limit", "48", "--batch-size", "4", "--n-per-cell", "1", "--seed", "3"]


def _cli(*args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "modality_lens.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _summary_without_provenance(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return summary


def test_rows_of_a_small_run(tmp_path):
    from modality_lens.pipeline import run

    run_dir = run(model="tiny:llava", limit=12, batch_size=5, n_per_cell=1, out=str(tmp_path / "r"), seed=1,
                  progress=False, figures=False, n_boot=50)
    cases = pq.read_table(run_dir.cases_path).to_pylist()
    layers = pq.read_table(run_dir.layers_path).to_pylist()
    assert len(cases) == 12 and len({c["case_id"] for c in cases}) == 12
    # one row per case x pass x lens layer (embedding + 4 decoder layers of the tiny model)
    assert len(layers) == 12 * 3 * 5
    for c in cases:
        mine = [r for r in layers if r["case_id"] == c["case_id"] and r["pass"] == "conflict"]
        assert [r["layer"] for r in sorted(mine, key=lambda r: r["layer"])] == list(range(5))
        last = max(mine, key=lambda r: r["layer"])
        # the conflict answer is the last layer's class
        assert {"text": "text", "vision": "vision"}.get(last["class"], "other") == c["label"]
        assert c["dh_rel"] == pytest.approx(2 * (c["h_t"] - c["h_v"]) / (c["h_t"] + c["h_v"]))
        h_v = [r for r in layers if r["case_id"] == c["case_id"] and r["pass"] == "vision" and r["layer"] == 4]
        assert h_v[0]["entropy"] == pytest.approx(c["h_v"])


def test_resume_after_sigkill_gives_the_uninterrupted_result(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    code, out, err = _finish(_cli("run", *RUN_ARGS, "--out", str(whole)))
    assert code == 0, err

    proc = _cli("run", *RUN_ARGS, "--out", str(killed))
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until some chunks are committed, then kill mid-run
        if len(list((killed / "cases").glob("part-*.parquet"))) >= 3 if (killed / "cases").is_dir() else False:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    parts = list((killed / "cases").glob("part-*.parquet"))
    assert 0 < len(parts) < 12, "the kill must land mid-run"
    assert not (killed / "summary.json").exists()

    code, out, err = _finish(_cli("run", *RUN_ARGS, "--out", str(killed), "--resume"))
    assert code == 0, err
    a = pq.read_table(whole / "cases.parquet").to_pylist()
    b = pq.read_table(killed / "cases.parquet").to_pylist()
    ids_b = [r["case_id"] for r in b]
    assert len(ids_b) == len(set(ids_b)) == 48
    assert sorted(ids_b) == sorted(r["case_id"] for r in a)
    assert pq.read_table(killed / "layers.parquet").num_rows == pq.read_table(whole / "layers.parquet").num_rows
    assert _summary_without_provenance(killed) == _summary_without_provenance(whole)
    assert json.loads((killed / "run.json").read_text())["resumes"]


def test_resume_on_a_foreign_run_is_refused_and_nothing_is_lost(tmp_path):
    out = tmp_path / "r"
    code, _, err = _finish(_cli("run", *RUN_ARGS[:-2], "--seed", "3", "--limit", "8", "--out", str(out)))
    assert code == 0, err
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    code, _, err = _finish(_cli("run", "--model", "tiny:gemma3", "--limit", "8", "--n-per-cell", "1",
                                "--seed", "4", "--out", str(out), "--resume"))
    assert code == 2 and "Traceback" not in err
    assert "--resume refused" in err and "seed" in err and "model" in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    from modality_lens.pipeline import run

    # no --resume on a full directory (refused by the argument check, or by RunDir where that is skipped)
    with pytest.raises(ModalityLensError, match="not empty"):
        run(model="tiny:llava", limit=8, n_per_cell=1, seed=3, out=str(out), progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_unknown_model_directory(tmp_path):
    code, _, err = _finish(_cli("run", "--model", str(tmp_path), "--out", str(tmp_path / "r")))
    assert code == 2 and "Traceback" not in err and "config.json" in err
    assert not (tmp_path / "r").exists()


def _write_dataset(folder: Path, cases):
    from interp.datasets.storage import save_dataset

    save_dataset(cases, folder, {"generator": "test", "parameters": {}, "seed": 0}, progress=False)


def test_dataset_folder_with_a_missing_image(tmp_path):
    from interp.datasets.colour import colour_cases

    data = tmp_path / "data"
    _write_dataset(data, list(colour_cases(1, 0, image_size=32, visual_tiers=[0, 1], text_tiers=[0])))
    victim = sorted((data / "images").glob("*.png"))[0]
    victim.unlink()
    code, _, err = _finish(_cli("run", "--model", "tiny:llava", "--dataset", str(data), "--out", str(tmp_path / "r")))
    assert code == 2 and "Traceback" not in err
    assert "images missing" in err
    assert not (tmp_path / "r").exists()


def test_case_whose_answers_tokenise_identically(tmp_path):
    from interp.datasets.colour import colour_cases
    from modality_lens.cases import case_pairs

    cases = list(colour_cases(1, 0, image_size=32, visual_tiers=[0], text_tiers=[0], controls=False))
    bad = replace(cases[0], id="bad-case", text_answer=cases[0].image_answer.capitalize(),
                  text_candidates=(cases[0].image_answer.capitalize(),))
    from hooks.loading import load_vlm

    tok = load_vlm("tiny:llava", self_check=False).tokenizer
    with pytest.raises(CaseError, match="bad-case.*identical tokens"):
        case_pairs(tok, [bad])

    data = tmp_path / "data"
    _write_dataset(data, [cases[0], bad])
    out = tmp_path / "r"
    code, _, err = _finish(_cli("run", "--model", "tiny:llava", "--dataset", str(data), "--out", str(out)))
    assert code == 2 and "Traceback" not in err
    assert "bad-case" in err and "rule 'answers'" in err  # every case is validated before the model sees it
    assert not out.exists()
    assert isinstance(CaseError("x"), ModalityLensError)


def test_built_in_scenes_are_drawn_at_the_model_input_size():
    """The shipped model takes 64 px images: the built-in set must be drawn at 64 px, not
    at 800x600 and centre-cropped by the processor (which cuts off targets)."""
    from hooks.tiny import tiny_model
    from modality_lens.cases import auto_image_size
    from modality_lens.pipeline import default_model

    from hooks.loading import load_vlm

    if Path(default_model(), "config.json").is_file():
        assert auto_image_size(load_vlm(default_model(), self_check=False).processor) == 64
    assert auto_image_size(tiny_model("llava")[1]) == 32           # CLIP crop 32 x 32
    assert auto_image_size(tiny_model("llava", size="mid")[1]) is None  # 336 px: the paper's sizes
    assert auto_image_size(tiny_model("gemma3")[1]) == 32           # size {height, width}


def test_limit_draws_only_the_scenes_of_the_cases_it_keeps(monkeypatch):
    """`--limit 14` of the colour set: its first 14 cases, equal to those of the full set, from
    the 2 scenes they use (12 cases per scene: 4 text tiers x 3 kinds), not from all of them."""
    import interp.datasets.colour as colour
    from modality_lens.cases import builtin_cases

    full, full_info = builtin_cases("colour", seed=2, n_per_cell=1, image_size=32)
    drawn = []
    original = colour.draw_colour_scene
    monkeypatch.setattr(colour, "draw_colour_scene", lambda *a, **k: drawn.append(a[0]) or original(*a, **k))
    part, info = builtin_cases("colour", seed=2, n_per_cell=1, image_size=32, limit=14)
    assert drawn == [0, 1]  # visual tiers 0 and 1: one scene each
    assert [c.id for c in part] == [c.id for c in full[:14]]
    assert all(a.open_image().tobytes() == b.open_image().tobytes() for a, b in zip(part, full))
    assert (info["n_cases"], full_info["n_cases"]) == (14, len(full)) and info["hash"] != full_info["hash"]
    assert info["parameters"]["limit"] == 14 and "limit" not in full_info["parameters"]


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])  # a prefix-cache class; one with dedupe only
def test_reuse_gives_the_rows_of_the_uncached_computation(family):
    """Dedupe (and the prefix cache where the class has one) against `reuse=False`, row by row."""
    from hooks.loading import load_vlm
    from interp.datasets.colour import colour_cases
    from modality_lens.dedupe import PassMemo
    from modality_lens.pipeline import iter_rows

    vlm = load_vlm(f"tiny:{family}")
    cases = list(colour_cases(1, 0, image_size=32, visual_tiers=[0, 3], text_tiers=[0, 1, 2]))
    memo = PassMemo(vlm)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        cached = [r for rows, _ in iter_rows(vlm, cases, batch_size=5, progress=False, memo=memo) for r in rows]
    fallback = [str(w.message) for w in said if "full forwards" in str(w.message)]
    assert len(fallback) == (1 if family == "qwen2_5_vl" else 0)  # said once, not once per batch
    plain = [r for rows, _ in iter_rows(vlm, cases, batch_size=5, progress=False, reuse=False) for r in rows]
    for a, b in zip(cached, plain, strict=True):
        for column in a:
            if isinstance(a[column], float):
                assert a[column] == pytest.approx(b[column], abs=1e-5), column
            else:
                assert a[column] == b[column], column
    stats = memo.stats()
    distinct_vision = {(c.image_name, c.question) for c in cases}
    assert stats["passes"]["vision"] == {"requested": len(cases), "computed": len(distinct_vision)}
    assert stats["forwards"]["saved"] == 3 * len(cases) - sum(p["computed"] for p in stats["passes"].values()) > 0
    assert stats["prefix_cache"]["used"] == (family == "llava")
    assert stats["lm_tokens"]["run"] < stats["lm_tokens"]["uncached"]
    images = {c.image_name for c in cases}
    assert stats["vision_tower_runs"]["run"] == (len(images) if family == "llava" else len(distinct_vision) + len(cases))


def test_run_records_threads_and_what_reuse_saved(tmp_path):
    import torch

    from modality_lens.pipeline import run

    before = torch.get_num_threads()
    try:
        run_dir = run(model="tiny:llava", limit=12, batch_size=4, n_per_cell=1, out=str(tmp_path / "r"), seed=1,
                      progress=False, figures=False, n_boot=20, threads=1)
        args = json.loads(run_dir.run_json.read_text())["arguments"]
        assert args["threads"] == 1 and args["reuse"] is True
    finally:
        torch.set_num_threads(before)
    saved = json.loads((tmp_path / "r" / "reuse.json").read_text())
    assert saved["cases"] == 12 and saved["forwards"]["requested"] == 36
    assert saved["forwards"]["saved"] > 0 and saved["lm_tokens"]["ratio"] < 1
    plain = run(model="tiny:llava", limit=12, batch_size=4, n_per_cell=1, out=str(tmp_path / "p"), seed=1,
                progress=False, figures=False, n_boot=20, reuse=False)
    assert json.loads((tmp_path / "p" / "reuse.json").read_text()) == {"cases": 12, "reuse": False}
    a = pq.read_table(tmp_path / "r" / "cases.parquet").to_pylist()
    b = pq.read_table(plain.cases_path).to_pylist()
    assert [r["label"] for r in a] == [r["label"] for r in b] and [r["kept"] for r in a] == [r["kept"] for r in b]
