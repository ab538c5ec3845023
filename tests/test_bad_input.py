"""Bad input never reaches a traceback: every input below, fed to the CLI in a subprocess, exits 2
with a message naming the problem and the fix, and leaves every file that was there byte-identical.

Each entry of `TABLE` builds its input in a scratch folder (from the shared `base` fixtures)
and gives the command line, the words the message must hold, and optionally the environment
or a resource limit. Inputs the API takes directly (`VLM.lens`, `load_vlm`) are checked
in-process at the end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from interp.errors import ArgumentError, ModelSourceError

RUN = ["run", "--model", "tiny:llava", "--n-per-cell", "1", "--batch-size", "4"]


def _cli(args, env=None, limit_bytes=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    full_env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})
    full_env = {k: v for k, v in full_env.items() if v is not None}

    def limit():  # a disk that fills up: writes past `limit_bytes` fail (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "modality_lens.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600, preexec_fn=limit if limit_bytes else None)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small valid dataset folder and a saved tiny LLaVA directory, built once."""
    from hooks.tiny import tiny_model
    from interp.datasets.colour import colour_cases
    from interp.datasets.storage import save_dataset

    root = tmp_path_factory.mktemp("base")
    cases = list(colour_cases(1, 0, image_size=32, visual_tiers=[0, 1], text_tiers=[0, 3], controls=False))
    save_dataset(cases, root / "data", {"generator": "colour", "parameters": {}, "seed": 0}, progress=False)
    model, processor = tiny_model("llava")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return {"root": root, "cases": cases}


def _copy(base, name: str, tmp: Path) -> Path:
    target = tmp / name
    shutil.copytree(base["root"] / name, target, symlinks=True)
    return target


def _edit_line(base, tmp: Path, **changes) -> Path:
    """The dataset with its first line's values replaced (and no content hash to disagree with)."""
    data = _copy(base, "data", tmp)
    lines = (data / "cases.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record.update(changes)
    lines[0] = json.dumps(record)
    (data / "cases.jsonl").write_text("\n".join(lines) + "\n")
    info = json.loads((data / "dataset.json").read_text())
    info.pop("content_hash")
    (data / "dataset.json").write_text(json.dumps(info))
    return data


def _saved_with(base, tmp: Path, *bad_cases) -> Path:
    """A dataset folder written by save_dataset whose first cases are `bad_cases` (hash consistent)."""
    from interp.datasets.storage import save_dataset

    data = tmp / "bad"
    save_dataset([*bad_cases, *base["cases"][len(bad_cases):]], data,
                 {"generator": "colour", "parameters": {}, "seed": 0}, progress=False)
    return data


def _weights(base, tmp: Path, damage: Callable[[Path], None]) -> Path:
    model = _copy(base, "model", tmp)
    damage(model)
    return model


def _truncate(model: Path) -> None:
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt_header(model: Path) -> None:
    f = model / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json !!!"
    f.write_bytes(bytes(data))


def _wider_config(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["text_config"].update(hidden_size=128, intermediate_size=256)
    (model / "config.json").write_text(json.dumps(config))


def _escape(base, tmp: Path, how: str) -> Path:
    outside = tmp / "outside.png"
    shutil.copy(next((base["root"] / "data" / "images").glob("*.png")), outside)
    if how == "dotdot":
        return _edit_line(base, tmp, image="../outside.png")
    data = _edit_line(base, tmp, image="images/link.png")
    (data / "images" / "link.png").symlink_to(outside)
    return data


def _empty_cases(base, tmp: Path) -> Path:
    data = _copy(base, "data", tmp)
    (data / "cases.jsonl").write_text("")
    info = json.loads((data / "dataset.json").read_text())
    info.update(n_cases=0)
    info.pop("content_hash")
    (data / "dataset.json").write_text(json.dumps(info))
    return data


def _finished_run(tmp: Path) -> Path:
    out = tmp / "r"
    done = _cli([*RUN, "--limit", "8", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


def _finished_run_with_a_torn_part(base, tmp: Path) -> Path:
    out = _finished_run(tmp)
    part = sorted((out / "cases").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    return out


def _read_only_out(tmp: Path) -> str:
    if os.geteuid() != 0:
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return str(locked / "run")
    return "/sys/modality-lens-test-run"  # root writes anywhere chmod allows; sysfs refuses new folders


class Bad(NamedTuple):
    make: Callable  # (base, tmp) -> the command line
    says: tuple[str, ...]  # words the message must hold (problem and fix)
    env: dict | None = None
    limit_bytes: int | None = None


def _colour(base, **changes):
    return replace(base["cases"][0], **changes)


TABLE: dict[str, Bad] = {
    # weights
    "truncated weights": Bad(lambda b, t: ["check", str(_weights(b, t, _truncate))],
                             ("model.safetensors", "truncated", "Download it again")),
    "corrupt header": Bad(lambda b, t: ["check", str(_weights(b, t, _corrupt_header))],
                          ("model.safetensors", "damaged", "save_pretrained")),
    "empty weights": Bad(lambda b, t: ["check", str(_weights(b, t, lambda m: (m / "model.safetensors").write_bytes(
        b"")))], ("0 bytes", "Download it again")),
    "shapes unlike the config": Bad(lambda b, t: ["check", str(_weights(b, t, _wider_config))],
                                    ("do not have the shapes", "config.json")),
    "no config.json": Bad(lambda b, t: ["check", str(t)], ("no config.json",)),
    "unsupported class": Bad(lambda b, t: (t / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
                             and ["check", str(t)], ("no adapter for BertForMaskedLM", "adapter")),
    "--device cuda without CUDA": Bad(lambda b, t: [*RUN, "--device", "cuda"], ("CUDA is not available",
                                                                               "--device cpu")),
    "unknown hub id, network": Bad(lambda b, t: ["check", "modality-lens-test/no-such-model"],
                                   ("modality-lens-test/no-such-model", "HF_HUB_OFFLINE", "local"),
                                   env={"HF_HUB_OFFLINE": None}),
    "unknown hub id, offline": Bad(lambda b, t: ["check", "modality-lens-test/no-such-model"],
                                   ("not in the local Hugging Face cache", "HF_HUB_OFFLINE is set", "DIR")),
    "missing local path with one slash": Bad(lambda b, t: (t / "models").mkdir() or ["check", "models/no-model"],
                                             ("no directory", "saved in")),
    # options
    "--batch-size 0": Bad(lambda b, t: [*RUN, "--batch-size", "0"], ("--batch-size", "at least 1")),
    "--batch-size -3": Bad(lambda b, t: [*RUN, "--batch-size", "-3"], ("--batch-size", "at least 1")),
    "--seed -5": Bad(lambda b, t: [*RUN, "--seed", "-5"], ("--seed", "0 or more")),
    "--image-size 0": Bad(lambda b, t: [*RUN, "--image-size", "0"], ("--image-size", "at least 32")),
    "--limit -1": Bad(lambda b, t: [*RUN, "--limit", "-1"], ("--limit", "at least 1")),
    "--limit 0": Bad(lambda b, t: [*RUN, "--limit", "0"], ("--limit", "at least 1")),
    "--n-per-cell 0": Bad(lambda b, t: [*RUN, "--n-per-cell", "0"], ("--n-per-cell", "at least 1")),
    "--threads 0": Bad(lambda b, t: [*RUN, "--threads", "0"], ("--threads", "at least 1")),
    "--device banana": Bad(lambda b, t: [*RUN, "--device", "banana"], ("unknown device 'banana'", "cpu")),
    "--dtype float7": Bad(lambda b, t: [*RUN, "--dtype", "float7"], ("unknown dtype", "bfloat16")),
    "--trust-remote-code on run": Bad(lambda b, t: [*RUN, "--trust-remote-code"], ("unrecognized arguments",
                                                                                  "usage:")),
    "--dataset colours": Bad(lambda b, t: [*RUN, "--dataset", "colours"], ("neither a dataset folder",
                                                                           "'colour'", "shapes")),
    "dataset shapes --n-per-cell 0": Bad(lambda b, t: ["dataset", "shapes", "--out", str(t / "d"),
                                                       "--n-per-cell", "0"], ("--n-per-cell", ">= 1")),
    # dataset lines
    "answer is a number": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, text_answer=7))],
                              ("line 1", "text_answer must be a non-empty string", "write the dataset again")),
    "tier is a string": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, visual_tier="0"))],
                            ("line 1", "visual_tier must be an integer or null")),
    "id is a number": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, id=5))],
                          ("line 1", "id must be a non-empty string")),
    "image is null": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, image=None))],
                         ("line 1", "image must be")),
    "empty context": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, context=""))],
                         ("line 1", "context must be a non-empty string")),
    "absolute image path": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, image=str(t / "x.png")))],
                               ("absolute path", "relative to the dataset folder")),
    "image_candidates a string": Bad(lambda b, t: [*RUN, "--dataset", str(_edit_line(b, t, image_candidates="red"))],
                                     ("image_candidates must be a non-empty list of strings",)),
    "image path with ..": Bad(lambda b, t: [*RUN, "--dataset", str(_escape(b, t, "dotdot"))],
                              ("outside the dataset folder", "inside the folder")),
    "image symlink out of the folder": Bad(lambda b, t: [*RUN, "--dataset", str(_escape(b, t, "symlink"))],
                                           ("outside the dataset folder", "symlink")),
    "empty cases.jsonl": Bad(lambda b, t: [*RUN, "--dataset", str(_empty_cases(b, t))], ("holds no cases",
                                                                                       "--force")),
    "missing image": Bad(lambda b, t: [*RUN, "--dataset", str(_missing_image(b, t))], ("images missing",)),
    # cases that parse but break a rule (run validates as `dataset check` does)
    "context no longer names the text answer": Bad(
        lambda b, t: [*RUN, "--dataset", str(_saved_with(b, t, _colour(b, context="The circle is nice .")))],
        ("context_names_text_answer", "dataset check")),
    "control sometimes": Bad(lambda b, t: [*RUN, "--dataset", str(_saved_with(b, t, _colour(b, control="sometimes")))],
                             ("rule 'control'", "sometimes")),
    "empty question": Bad(lambda b, t: [*RUN, "--dataset", str(_saved_with(b, t, _colour(b, question=" ")))],
                          ("question must be a non-empty string", "write the dataset again")),
    "answers that differ only in case": Bad(lambda b, t: [*RUN, "--dataset", str(_saved_with(b, t, _colour(
        b, id="bad-case", text_answer=b["cases"][0].image_answer.capitalize(),
        text_candidates=(b["cases"][0].image_answer.capitalize(),))))], ("bad-case", "rule 'answers'")),
    # run time
    "read-only --out": Bad(lambda b, t: [*RUN, "--limit", "4", "--out", _read_only_out(t)],
                           ("choose another --out",)),
    "full disk": Bad(lambda b, t: [*RUN, "--limit", "8", "--out", str(t / "r")], ("could not write", "--resume"),
                     limit_bytes=6000),
    "resume of another run": Bad(lambda b, t: [*RUN, "--limit", "8", "--seed", "4", "--out",
                                               str(_finished_run(t)), "--resume"],
                                 ("--resume refused", "seed 0 != requested 4", "choose another --out")),
    "torn Parquet part on resume": Bad(lambda b, t: [*RUN, "--limit", "8", "--out",
                                                     str(_finished_run_with_a_torn_part(b, t)), "--resume"],
                                       ("part-000000.parquet", "damaged", "--resume")),
}


def _missing_image(base, tmp: Path) -> Path:
    data = _copy(base, "data", tmp)
    sorted((data / "images").glob("*.png"))[0].unlink()
    return data


@pytest.mark.parametrize("name", sorted(TABLE))
def test_bad_input_gives_a_message_not_a_traceback(name, base, tmp_path):
    bad = TABLE[name]
    if name == "--device cuda without CUDA":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    args = bad.make(base, tmp_path)
    before = _tree(tmp_path)
    done = _cli(args, env=bad.env, limit_bytes=bad.limit_bytes, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for words in bad.says:
        assert words in output, f"{words!r} not in:\n{output[-2000:]}"
    after = _tree(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing that was there changed


def test_lens_arguments_are_checked():
    from hooks.loading import load_vlm, sample_items
    from hooks.tiny import tiny_model

    vlm = load_vlm(tiny_model("llava"), self_check=False)
    batch = vlm.passes(sample_items()[:1], ("text",))["text"]
    with pytest.raises(ArgumentError, match="outside the vocabulary"):
        vlm.lens(batch, candidate_ids=[10**6])
    with pytest.raises(ArgumentError, match="top_k=257"):
        vlm.lens(batch, top_k=vlm.vocab_size + 1)
    assert vlm.lens(batch, top_k=vlm.vocab_size, keep_logits=False).top_ids.shape[-1] == vlm.vocab_size


def test_load_vlm_on_a_device_this_machine_lacks():
    import torch

    from hooks.loading import load_vlm

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelSourceError, match="CUDA is not available"):
        load_vlm("tiny:llava", device="cuda")
    with pytest.raises(ModelSourceError, match="unknown device"):
        load_vlm("tiny:llava", device="banana")


def test_a_model_that_answers_outside_the_candidates_is_told_so():
    import pyarrow as pa

    from modality_lens.finalize import _outside_warning

    def table(rows):
        """rows of (class_v, y_v, class_t, y_t); every case's answers are red (image) and blue (text)."""
        return pa.table({"class_v": [r[0] for r in rows], "y_v": [r[1] for r in rows],
                         "class_t": [r[2] for r in rows], "y_t": [r[3] for r in rows],
                         "image_answer": ["red"] * len(rows), "text_answer": ["blue"] * len(rows)})

    ok, no_shape, no_word = ("vision", "red", "text", "blue"), ("other", "circle", "text", "blue"), \
        ("vision", "red", "other", "the")
    three_of_four = table([no_shape, no_word, ("other", "circle", "other", "the"), ok])
    (warning,) = _outside_warning(three_of_four)
    assert warning.startswith("3 of 4 cases were answered outside the dataset's answer words")
    assert "'circle'" in warning and "'the'" in warning
    assert _outside_warning(table([no_shape, no_word, ok, ok])) == []  # half is not most
    # wrong answers that are answers of the dataset (the text's colour in the vision-only pass,
    # a capitalised image colour) are mistakes, not a foreign task
    assert _outside_warning(table([("other", "Blue", "other", "RED")] * 4)) == []


def test_the_outside_warning_is_printed_with_the_key_numbers(tmp_path):
    import pyarrow.parquet as pq

    from modality_lens.pipeline import run
    from modality_lens.report import format_summary

    run_dir = run(model="tiny:llava", dataset="shapes", limit=12, n_per_cell=1, out=str(tmp_path / "r"),
                  progress=False, figures=False, n_boot=20)
    rows = pq.read_table(run_dir.cases_path).to_pylist()
    from interp.vocabulary import normalise_answer as norm

    words = {norm(r[k]) for r in rows for k in ("image_answer", "text_answer")}
    outside = sum((r["class_v"] == "other" and norm(r["y_v"]) not in words) or (r["class_t"] == "other" and
                                                                                norm(r["y_t"]) not in words)
                  for r in rows)
    summary = run_dir.read_summary()
    printed = format_summary(summary).splitlines()
    assert outside > len(rows) / 2  # a random tiny model answers with some other token
    assert summary["warnings"][0].startswith(f"{outside} of {len(rows)} cases were answered outside")
    assert printed[-1] == f"warning: {summary['warnings'][0]}"
