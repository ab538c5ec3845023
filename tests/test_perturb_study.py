"""The perturbation study end to end on tiny models: the lens's confidence, rows, resume, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from interp.calibration import auroc, brier_score, expected_calibration_error, vcd_scores
from interp.datasets.colour import colour_cases
from interp.errors import ArgumentError, CaseError
from interp.uncertainty import answer_probability, entropy, nmlp_confidence, one_minus_max_p, top2_margin

FAMILIES_TESTED = ("llava", "qwen2_vl", "gemma3", "idefics3", "paligemma")
PERTURBATIONS = ("noise", "blur", "occlusion", "crop")


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "modality_lens.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _conflict_cases(n):
    return [c for c in itertools.islice(colour_cases(1, 2, image_size=64), 60) if c.control is None][:n]


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_lens_confidence_matches_the_full_distribution(family):
    from hooks.loading import load_vlm
    from hooks.perturb import confidence_lens
    from hooks.tiny import tiny_model
    from modality_lens.cases import case_item, case_pairs

    vlm = load_vlm(tiny_model(family))
    cases = _conflict_cases(3)
    pairs = case_pairs(vlm.tokenizer, cases)
    lens = confidence_lens(vlm, [case_item(c) for c in cases], pairs, "vision", keep_log_probs=True)
    lp = lens.log_probs  # (batch, layer, vocab), a second route to every measure
    assert lp.shape[:2] == (3, vlm.n_layers + 1)
    np.testing.assert_allclose(lens.nmlp, nmlp_confidence(lp, k=20), atol=1e-4)
    np.testing.assert_allclose(lens.entropy, entropy(lp), atol=1e-4)
    np.testing.assert_allclose(lens.one_minus_max_p, one_minus_max_p(lp), atol=1e-5)
    np.testing.assert_allclose(lens.margin, top2_margin(lp), atol=1e-5)
    for b, pair in enumerate(pairs):
        np.testing.assert_allclose(lens.p_answer[b], answer_probability(lp[b], sorted(pair.vision_ids)), atol=1e-5)
    np.testing.assert_allclose(lp[:, -1], lens.final_log_probs, atol=1e-4)  # the last lens layer is the model


@pytest.mark.parametrize("family", FAMILIES_TESTED[1:])
def test_the_study_runs_on_each_family(family, tmp_path):
    from modality_lens.perturb import run_perturb

    run = run_perturb(model=f"tiny:{family}", out=str(tmp_path / "r"), n_per_cell=1, limit=2, n_levels=2,
                      n_samples=4, batch_size=3, n_boot=20, progress=False, figures=False)
    units = pq.read_table(run.units_path).to_pylist()
    assert len(units) == 2 * len(PERTURBATIONS) * 3
    layers = pq.read_table(run.unit_layers_path)
    info = json.loads(run.run_json.read_text())
    assert layers.num_rows == len(units) * (info["model"]["n_layers"] + 1)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from modality_lens.perturb import run_perturb

    out = tmp_path_factory.mktemp("perturb") / "run"
    return run_perturb(model="tiny:llava", out=str(out), n_per_cell=1, limit=4, n_levels=4, conflict=True,
                       n_samples=8, batch_size=3, n_boot=50, seed=1, progress=False, figures=True)


def test_rows_and_summary_of_a_small_run(small_run):
    units = pq.read_table(small_run.units_path).to_pylist()
    vision = [u for u in units if u["pass"] == "vision"]
    conflict = [u for u in units if u["pass"] == "conflict"]
    assert len(vision) == 4 * len(PERTURBATIONS) * 5
    assert len(conflict) == 16 * len(PERTURBATIONS) * 5  # 4 images x 4 text tiers
    assert len({u["row_id"] for u in units}) == len(units)
    # level 0 is the original image: one pass, the same numbers under every perturbation
    for unit_id in {u["unit_id"] for u in units}:
        originals = [u for u in units if u["unit_id"] == unit_id and u["level_index"] == 0]
        assert len(originals) == len(PERTURBATIONS)
        assert len({(u["nmlp"], u["answer"], u["p_answer"]) for u in originals}) == 1
    summary = json.loads(small_run.summary_path.read_text())
    entry = summary["passes"]["vision"]["blur"]
    for lv in entry["levels"]:
        mine = [u for u in vision if u["perturbation"] == "blur" and u["level_index"] == lv["level_index"]]
        y = [u["correct"] for u in mine]
        max_p = [1 - u["one_minus_max_p"] for u in mine]
        assert lv["accuracy"]["mean"] == pytest.approx(np.mean(y))
        assert lv["confidence"]["nmlp"]["mean"] == pytest.approx(np.mean([u["nmlp"] for u in mine]))
        assert lv["ece"] == pytest.approx(expected_calibration_error(max_p, y))
        assert lv["brier"] == pytest.approx(brier_score(max_p, y))
        assert lv["auroc"]["nmlp"]["auroc"] == auroc([u["nmlp"] for u in mine], y)
    c = summary["passes"]["conflict"]["noise"]["levels"][-1]
    mine = [u for u in conflict if u["perturbation"] == "noise" and u["level_index"] == 4]
    assert c["tfr"]["mean"] == pytest.approx(np.mean([u["follows_text"] for u in mine]))
    assert (small_run.path / "report.html").stat().st_size > 10_000
    assert all(u["vcd_class"] is not None for u in units if u["perturbation"] == "noise")
    assert all(u["vcd_class"] is None for u in units if u["perturbation"] != "noise")


def test_vcd_at_level_zero_gives_the_plain_answer(small_run):
    units = pq.read_table(small_run.units_path).to_pylist()
    # i' = i at level 0: the contrast is the plain log-probability, so the VCD answer is the lens's
    for u in units:
        if u["perturbation"] == "noise" and u["level_index"] == 0:
            assert u["vcd_class"] == {"other": "irrelevant"}.get(u["answer_class"], u["answer_class"])
    lp = np.log([0.5, 0.3, 0.2])
    assert np.argmax(vcd_scores(lp, lp)) == 0


def test_resume_after_sigkill_gives_the_uninterrupted_rows(tmp_path):
    args = ["--model", "tiny:llava", "--n-per-cell", "1", "--limit", "8", "--n-levels", "2", "--batch-size", "1",
            "--n-samples", "4", "--seed", "2", "--threads", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _cli("perturb", *args, "--out", str(whole))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = _cli("perturb", *args, "--out", str(killed))
    deadline = time.time() + 300
    while time.time() < deadline:
        if (killed / "cases").is_dir() and len(list((killed / "cases").glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 0 < len(list((killed / "cases").glob("part-*.parquet"))) < 8, "the kill must land mid-run"
    assert not (killed / "summary.json").exists()
    proc = _cli("perturb", *args, "--out", str(killed), "--resume")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    key = lambda r: r["row_id"]  # noqa: E731
    a = sorted(pq.read_table(whole / "units.parquet").to_pylist(), key=key)
    b = sorted(pq.read_table(killed / "units.parquet").to_pylist(), key=key)
    assert a == b
    assert json.loads((whole / "summary.json").read_text()) == json.loads((killed / "summary.json").read_text())
    proc = _cli("perturb", *args, "--out", str(killed), "--resume", "--perturbations", "blur")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "perturbations" in err and "Nothing was changed" in err


@pytest.mark.parametrize("option, words", [
    (["--perturbations", "noise,fog"], "unknown perturbation 'fog'; choose from noise, blur, occlusion, crop"),
    (["--levels", "0.5,1.2"], "must lie in [0, 1]"),
    (["--n-levels", "0"], "--n-levels"),
    (["--n-samples", "0"], "--n-samples"),
    (["--vcd-beta", "2"], "--vcd-beta must be in [0.0, 1.0]"),
])
def test_bad_options_stop_before_anything_is_written(option, words, tmp_path):
    proc = _cli("perturb", "--model", "tiny:llava", "--out", str(tmp_path / "r"), *option)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_bad_arguments_of_the_api_stop_before_anything_is_written(tmp_path):
    from modality_lens.perturb import run_perturb

    for kwargs, error in (({"perturbations": ["fog"]}, ArgumentError), ({"levels": [-0.5]}, ArgumentError),
                          ({"n_levels": 0}, ArgumentError), ({"n_samples": 0}, ArgumentError)):
        with pytest.raises(error):
            run_perturb(model="tiny:llava", out=str(tmp_path / "r"), progress=False, **kwargs)
        assert not (tmp_path / "r").exists()


def test_occlusion_of_images_without_a_box_is_refused_before_writing(tmp_path):
    from interp.datasets.storage import save_dataset

    cases = [dataclasses.replace(c, target_box=None, seed=None, task="photo") for c in _conflict_cases(2)]
    save_dataset(cases, tmp_path / "data", {"generator": "test", "parameters": {}, "seed": None}, progress=False)
    proc = _cli("perturb", "--model", "tiny:llava", "--dataset", str(tmp_path / "data"), "--out",
                str(tmp_path / "r"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "occlusion needs each image's target box" in err and "--perturbations" in err
    assert not (tmp_path / "r").exists()
    from modality_lens.perturb import run_perturb

    with pytest.raises(CaseError, match="target box"):
        run_perturb(model="tiny:llava", dataset=str(tmp_path / "data"), out=str(tmp_path / "r"), progress=False)
    run = run_perturb(model="tiny:llava", dataset=str(tmp_path / "data"), out=str(tmp_path / "r"), progress=False,
                      perturbations=["noise", "blur"], n_levels=1, n_samples=2, n_boot=10, figures=False)
    images = {c.image_name for c in cases}  # cases that share an image share their vision-only pass
    assert pq.read_table(run.units_path).num_rows == len(images) * 2 * 2


def test_the_experiment_script_runs_and_draws_a_contact_sheet(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "mine.png")
    script = Path(__file__).resolve().parent.parent / "experiments" / "perturbation_study.py"
    done = subprocess.run([sys.executable, str(script), "--model", "tiny:llava", "--n-per-cell", "1", "--limit", "2",
                           "--out", str(tmp_path / "run"), "--image", str(tmp_path / "mine.png"), "--sheet",
                           str(tmp_path / "sheet.png")], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vision pass, noise: 2 units" in done.stdout and "slope of mean" in done.stdout
    assert Image.open(tmp_path / "sheet.png").size == (40 * 9, 30 * 4)  # 9 levels x 4 perturbations
    assert (tmp_path / "run" / "report.html").is_file()


def test_the_report_command_rebuilds_a_perturbation_runs_report(small_run, tmp_path):
    """`modality-lens report RUN` on a perturb run: it finalizes it again with its own seed and
    bootstrap count (summary.json comes back identical) and writes report.html."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_run.path, copy)
    summary = (copy / "summary.json").read_text()
    (copy / "summary.json").unlink()
    (copy / "report.html").unlink()
    proc = _cli("report", str(copy))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and f"report: {copy / 'report.html'}" in out
    assert (copy / "summary.json").read_text() == summary
    assert "Confidence under visual perturbation" in (copy / "report.html").read_text()
