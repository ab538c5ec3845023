"""modality_lens.plots and modality_lens.report: figures and report.html drawn from a run directory alone."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from interp.errors import RunDirError
from modality_lens.plots import FIGURES, RunData, draw_all, logit_diff_grid, sample_cases
from modality_lens.finalize import finalize
from modality_lens.rows import LAYER_SCHEMA
from modality_lens.rundir import RunDir
from modality_lens.report import format_summary, report_main, write_report
from tests.simulated import run_info, synthetic_rows, write_run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cases, layers = synthetic_rows(n_conflict=200, n_controls=5, seed=5)
    run = write_run(tmp_path_factory.mktemp("plots") / "run", cases, layers, size=50)
    finalize(run, n_boot=100)
    run.close()
    return run


def _check_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 5  # something is drawn, not a blank canvas


def test_draw_all_writes_every_figure(finished):
    paths = draw_all(finished.path)
    assert [p.name for p in paths] == [f"{name}.png" for name, _, _ in FIGURES]
    for p in paths:
        assert p.parent == finished.path / "figures"
        _check_png(p)


def test_logit_diff_grid_by_hand():
    def case(cid, dh, kept=True, control=None):
        return {"case_id": cid, "dh_rel": dh, "kept": kept, "control": control}

    cases = [case("a", -1.0), case("b", 0.0), case("c", 1.0), case("dropped", 0.5, kept=False),
             case("ctrl", -0.5, kept=False, control="text_irrelevant"), case("nan", math.nan)]
    values = {"a": [1.0, 3.0], "b": [2.0, -4.0], "c": [4.0, 0.0], "dropped": [100.0, 100.0],
              "ctrl": [100.0, 100.0], "nan": [100.0, 100.0]}
    rows = [{"case_id": cid, "pass": p, "layer": layer, "class": "text", "top1": 0, "p_text": 0.5,
             "p_vision": 0.5, "logit_diff": (v[layer] if p == "conflict" else 50.0), "entropy": 1.0}
            for cid, v in values.items() for p in ("vision", "conflict") for layer in (0, 1)]
    edges, layer_ids, grid, counts = logit_diff_grid(cases, pa.Table.from_pylist(rows, schema=LAYER_SCHEMA),
                                                     n_bins=2, min_per_bin=1)
    assert edges.tolist() == [-1.0, 0.0, 1.0]
    assert layer_ids.tolist() == [0, 1]
    assert counts.tolist() == [1, 2]  # b sits on the inner edge: it goes right
    assert grid.tolist() == [[1.0, 3.0], [3.0, -2.0]]


def test_logit_diff_grid_without_cases():
    edges, layer_ids, grid, counts = logit_diff_grid([], LAYER_SCHEMA.empty_table())
    assert edges.size == layer_ids.size == grid.size == counts.size == 0


def test_sample_cases_are_spread_over_each_region(finished):
    data = RunData.load(finished)
    samples = sample_cases(data.cases, data.layers, per_region=3)
    assert set(samples) == {"ambiguous", "clear"}
    for region, picked in samples.items():
        pool = sorted(c["dh_rel"] for c in data.cases if c["region"] == region)
        assert len(picked) == 3
        assert all(c["region"] == region and c["kept"] and c["control"] is None for c in picked)
        assert [c["dh_rel"] for c in picked][0] == pool[0] and picked[-1]["dh_rel"] == pool[-1]


def _degenerate(kind, rows):
    cases, layers = rows
    if kind == "no_kept":
        return [{**r, "kept": False, "drop_reason": r["drop_reason"] or "both_wrong"} for r in cases], layers
    if kind == "single_class":
        return [{**r, "label": "text"} for r in cases], layers
    if kind == "no_layers":
        return cases, []
    return [], []


@pytest.mark.parametrize("kind", ["no_kept", "single_class", "no_layers", "empty"])
def test_degenerate_runs_still_draw_and_report(tmp_path, kind):
    cases, layers = _degenerate(kind, synthetic_rows(n_conflict=40, n_controls=2, seed=6))
    run = write_run(tmp_path / "run", cases, layers)
    run.close()
    # drawn from the unfinalized chunks: nothing is written besides the figures
    paths = draw_all(tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()
    for p in paths:
        _check_png(p)
    if kind in ("no_kept", "single_class", "empty"):
        assert RunData.load(run).summary["balance_point"] is None
    html = write_report(run).read_text()
    assert html.count("<img") == len(FIGURES)


def _without_data_uris(text):
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", text)


def test_report_is_self_contained(finished):
    html = write_report(finished).read_text(encoding="utf-8")  # draws the figures that are missing
    paths = [finished.figures_dir / f"{name}.png" for name, _, _ in FIGURES]
    assert html.count("<img") == len(FIGURES)
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert [base64.b64decode(e) for e in embedded] == [p.read_bytes() for p in paths]
    rest = _without_data_uris(html)
    assert "http" not in rest and "//" not in rest.replace("<!DOCTYPE", "")
    assert re.findall(r'(?:src|href)="(?!data:)', rest) == [] and "<script" not in rest and "<link" not in rest
    summary = finished.read_summary()
    assert f"{summary['balance_point']:.3f}" in html
    assert f"{summary['tfr']:.3f}" in html


def test_report_main_finalizes_and_draws(tmp_path, capsys):
    cases, layers = synthetic_rows(n_conflict=60, n_controls=2, seed=7)
    write_run(tmp_path / "run", cases, layers).close()
    assert report_main(str(tmp_path / "run")) == 0
    run = RunDir(tmp_path / "run")
    assert run.is_finalized() and run.report_path.exists()
    assert sorted(p.name for p in run.figures_dir.glob("*.png")) == sorted(f"{n}.png" for n, _, _ in FIGURES)
    out = capsys.readouterr().out
    summary = run.read_summary()
    assert f"report: {run.report_path}" in out
    assert f"{summary['tfr']:.3f}" in out and format_summary(summary) in out


def test_report_main_refuses_a_non_run(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        report_main(str(tmp_path / "missing"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(RunDirError, match="run.json"):
        report_main(str(tmp_path / "folder"))
    empty = RunDir(tmp_path / "fresh")
    empty.create(run_info(), resume=False)
    empty.close()
    assert report_main(str(tmp_path / "fresh")) == 0  # a run with no case yet: empty panels, no crash
