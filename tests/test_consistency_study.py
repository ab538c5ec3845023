"""`modality-lens consistency` end to end on a tiny model: rows, a summary recomputed from the rows
by hand, resume after kill -9, bad input that stops before anything is written, the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from interp.errors import ArgumentError, DatasetError

LINES = [
    {"id": "sky", "question": "What colour is the sky?", "answer": "blue", "context": "The sky is blue."},
    {"id": "sum", "question": "What is the number?", "answer": "7", "context": "The number is 7.", "pattern": r"(\d+)"},
    {"id": "leaf", "question": "What colour is a leaf?", "answer": "green", "context": "A leaf is green."},
    {"id": "bare", "question": "What colour is a lemon?", "answer": "yellow"},
]


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "modality_lens.cli", "consistency", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from modality_lens.consistency import run_consistency

    folder = tmp_path_factory.mktemp("consistency")
    path = folder / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    run = run_consistency(model="tiny:llava", items=str(path), batch_size=3, out=str(folder / "run"), n_boot=50,
                          max_new_tokens=3, ocr_max_new_tokens=4, progress=False, threads=1)
    return run.path


def test_rows_of_every_item_and_format(small_run):
    rows = pq.read_table(small_run / "rows.parquet").to_pylist()
    layers = pq.read_table(small_run / "row_layers.parquet").to_pylist()
    assert len(rows) == 4 * 2 + 3  # text and image for all four, mixed for the three with a context
    assert {r["format"] for r in rows if r["item_id"] == "bare"} == {"text", "image"}
    info = json.loads((small_run / "run.json").read_text())
    n_layers = info["model"]["n_layers"]
    # tiny:llava's CLIP processor crops every image to 32 x 32: --canvas auto fits the renderings to it
    assert info["arguments"]["canvas"] == "auto" and info["arguments"]["canvas_px"] == 32
    assert len(layers) == len(rows) * (n_layers + 1)
    for r in rows:
        assert (r["cer"] is None) == (r["format"] == "text")
        assert r["valid"] == (r["answer"] is not None) and not (r["correct"] and not r["valid"])
    text_layers = [x for x in layers if x["format"] == "text"]
    assert all(x["agrees_text"] for x in text_layers) and all(x["cosine"] is None for x in text_layers)
    assert all(-1 - 1e-6 <= x["cosine"] <= 1 + 1e-6 for x in layers if x["format"] != "text")


def test_summary_agrees_with_a_count_from_the_rows(small_run):
    rows = pq.read_table(small_run / "rows.parquet").to_pylist()
    s = json.loads((small_run / "summary.json").read_text())["variants"]["default"]
    units = defaultdict(dict)
    for r in rows:
        units[r["unit_id"]][r["format"]] = r
    three = [u for u in units.values() if len(u) == 3]
    same = sum(1 for u in three if len({f["answer"] for f in u.values()}) == 1 and u["text"]["answer"] is not None)
    solved = [u for u in three if any(f["correct"] for f in u.values())]
    assert s["n_items"] == 4 and s["n_three_formats"] == 3 == s["all"]["n"]
    assert s["all"]["rer"]["value"] == pytest.approx(same / 3)
    assert s["all"]["mmc"]["value"] == pytest.approx(len(solved) / 3)
    assert s["invalid"]["image"] == sum(1 for r in rows if r["format"] == "image" and r["answer"] is None)
    gated = [u for u in three if all(u[f]["cer"] == 0 for f in ("image", "mixed"))]
    assert s["n_ocr_gated"] == len(gated)
    assert (small_run / "report.html").read_text().count("data:image/png;base64") == 4


def test_resume_after_sigkill_gives_the_uninterrupted_rows(tmp_path):
    args = ["--model", "tiny:llava", "--items", "soebench", "--n-items", "6", "--batch-size", "1",
            "--max-new-tokens", "3", "--ocr-max-new-tokens", "3", "--threads", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _cli(*args, "--out", str(whole))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = _cli(*args, "--out", str(killed))
    deadline = time.time() + 300
    while time.time() < deadline:
        if (killed / "cases").is_dir() and len(list((killed / "cases").glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 0 < len(list((killed / "cases").glob("part-*.parquet"))) < 6, "the kill must land mid-run"
    assert not (killed / "summary.json").exists()
    proc = _cli(*args, "--out", str(killed), "--resume")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    key = lambda r: r["row_id"]  # noqa: E731
    a = sorted(pq.read_table(whole / "rows.parquet").to_pylist(), key=key)
    b = sorted(pq.read_table(killed / "rows.parquet").to_pylist(), key=key)
    assert a == b
    assert json.loads((whole / "summary.json").read_text()) == json.loads((killed / "summary.json").read_text())
    before = sorted(p.name for p in (killed / "cases").iterdir())
    proc = _cli(*args, "--out", str(killed), "--resume", "--max-new-tokens", "4")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "max_new_tokens" in err and "Nothing was changed" in err
    proc = _cli(*args, "--out", str(killed), "--resume", "--canvas", "none")  # other renderings: other numbers
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "canvas_px 32 != requested None" in err and "Nothing was changed" in err
    assert sorted(p.name for p in (killed / "cases").iterdir()) == before


@pytest.mark.parametrize("option, words", [
    (["--items", "missing.jsonl"], "--items must be one of colour, soebench or an existing .jsonl file"),
    (["--variants", "fancy"], "--variants must be one of default, rest+"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--canvas", "4"], "--canvas must be auto"),
    (["--canvas", "square"], "--canvas must be auto"),
])
def test_bad_options_stop_before_anything_is_written(option, words, tmp_path):
    proc = _cli("--model", "tiny:llava", "--out", str(tmp_path / "r"), *option)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_bad_jsonl_and_api_arguments_stop_before_writing(tmp_path):
    from modality_lens.consistency import run_consistency

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(LINES[0]) + "\n" + json.dumps({"question": "no answer?"}) + "\n")
    proc = _cli("--model", "tiny:llava", "--items", str(path), "--out", str(tmp_path / "r"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "bad.jsonl:2: no 'answer'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(DatasetError, match="no 'answer'"):
        run_consistency(model="tiny:llava", items=str(path), out=str(tmp_path / "r2"))
    with pytest.raises(ArgumentError, match="--n-items"):
        run_consistency(model="tiny:llava", items="soebench", n_items=0, out=str(tmp_path / "r3"))
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_the_report_command_rebuilds_the_report(small_run, tmp_path):
    report = small_run / "report.html"
    report.unlink()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "modality_lens.cli", "report", str(small_run)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RER" in report.read_text()


def test_the_experiment_script_prints_the_metrics(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "experiments" / "consistency_study.py"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), "--model", "tiny:llava", "--items", "soebench", "--n-items",
                           "3", "--max-new-tokens", "2", "--out", str(tmp_path / "e"), "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RER" in done.stdout and "McNemar" in done.stdout and "cosine per layer" in done.stdout
    assert (tmp_path / "e" / "summary.json").exists()
