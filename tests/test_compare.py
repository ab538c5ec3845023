"""`modality-lens compare` and `modality-lens run --seeds`: on small runs of the shipped model.

One `run --seeds 2,3` (504 cases per seed; both seeds need a balance point at this size, which
they have on the shipped model: the test fails, not skips, when one does not) makes the two seed
runs and their comparison; a 40-case shapes run is the other dataset. Every number checked is
read from the runs' own summary.json or recomputed from their cases.parquet, never from the
comparison under test.
"""

from __future__ import annotations

import json
import math
import statistics

import pyarrow.parquet as pq
import pytest

from modality_lens.cli import main
from modality_lens.compare import dataset_identity
from modality_lens.compare_figures import COMPARE_FIGURES
from modality_lens.plots import FIGURES
from modality_lens.seeds import seed_spread

SMALL = ["--n-boot", "100", "--threads", "1"]


def _code(args) -> int:
    """The exit code of `modality-lens ARGS` (argparse's refusals exit by SystemExit)."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    assert main(["run", "--seeds", "2,3", "--n-per-cell", "3", "--out", str(root / "seeds"), *SMALL]) == 0
    assert main(["run", "--dataset", "shapes", "--n-per-cell", "1", "--limit", "40", "--out",
                 str(root / "shapes"), *SMALL]) == 0
    return root


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_compare_of_two_seeds_reads_each_runs_summary(runs, capsys):
    dirs = [runs / "seeds" / "seed-2", runs / "seeds" / "seed-3"]
    out = runs / "cmp"
    assert main(["compare", *map(str, dirs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    assert [r["seed"] for r in result["runs"]] == [2, 3] and result["mixed_datasets"] is False
    for row, path in zip(result["runs"], dirs):
        s = _summary(path)
        assert row["balance_point"] == s["balance_point"] and row["balance_point_ci"] == s["balance_point_ci"]
        assert row["n_kept"] == s["n_kept"] and row["labels_kept"] == s["filter"]["labels_kept"]
        assert row["oscillation"]["ambiguous"]["ci"] == s["oscillation"]["ambiguous"]["ci"]
        # recomputed from the case rows: TFR, the kept count, the ambiguous region's mean switches
        cases = pq.read_table(path / "cases.parquet").to_pylist()
        kept = [c for c in cases if c["control"] is None and c["kept"]]
        n_text = sum(c["label"] == "text" for c in kept)
        n_vision = sum(c["label"] == "vision" for c in kept)
        assert row["n_kept"] == len(kept)
        assert row["tfr"] == pytest.approx(n_text / (n_text + n_vision))
        assert row["vfr"] == pytest.approx(n_vision / (n_text + n_vision))
        ambiguous = [c["oscillations"] for c in kept if c["region"] == "ambiguous"]
        assert row["oscillation"]["ambiguous"]["n"] == len(ambiguous)
        assert row["oscillation"]["ambiguous"]["mean"] == pytest.approx(sum(ambiguous) / len(ambiguous))
        assert f"{s['balance_point']:.3f}" in printed
    page = (out / "report.html").read_text()
    assert "1: seed-2" in page and "2: seed-3" in page
    for name, _, _ in COMPARE_FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000 and f'alt="{name}"' in page
    for name, _, _ in FIGURES:  # every figure of every run
        assert page.count(f'alt="{name}"') == 2, name


def test_a_shapes_run_against_a_colour_run_is_refused_and_nothing_is_written(runs, capsys):
    out = runs / "mixed"
    args = ["compare", str(runs / "seeds" / "seed-2"), str(runs / "shapes"), "--out", str(out)]
    assert _code(args) == 2
    err = capsys.readouterr().err
    assert "--allow-mixed" in err and "shapes" in err and "colour" in err
    assert not out.exists()
    assert main(args + ["--allow-mixed"]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["mixed_datasets"] is True and "--allow-mixed" in (out / "report.html").read_text()


def test_bad_compare_input_names_the_fix_and_writes_nothing(runs, tmp_path, capsys):
    seed0 = str(runs / "seeds" / "seed-2")
    for args, words in ((["compare", seed0, seed0], "twice"),
                        (["compare", seed0, str(tmp_path)], "not a run directory"),
                        (["compare", seed0, "--out", seed0], "is a run directory")):
        before = sorted(p.name for p in tmp_path.iterdir())
        out = args if "--out" in args else args + ["--out", str(tmp_path / "out")]
        assert _code(out) == 2
        assert words in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dataset_identity_ignores_the_seed_and_the_limit_only():
    def info(seed, limit=None, generator="colour", size=64):
        params = {"n_per_cell": 4, "image_size": size, "generator": generator, **({"limit": limit} if limit else {})}
        return {"dataset": {"source": f"builtin:{generator}", "parameters": params, "seed": seed, "hash": str(seed)}}

    assert dataset_identity(info(0)) == dataset_identity(info(7, limit=10))
    assert dataset_identity(info(0)) != dataset_identity(info(0, generator="shapes"))
    assert dataset_identity(info(0)) != dataset_identity(info(0, size=32))
    assert dataset_identity({**info(0), "job": "typographic"}) != dataset_identity(info(0))


def test_seeds_spread_equals_a_recomputation_from_each_seeds_summary(runs, capsys):
    study = json.loads((runs / "seeds" / "compare.json").read_text())
    points = [_summary(runs / "seeds" / f"seed-{k}")["balance_point"] for k in (2, 3)]
    cis = [_summary(runs / "seeds" / f"seed-{k}")["balance_point_ci"] for k in (2, 3)]
    assert all(p is not None for p in points), "both seeds of this size have a balance point"
    spread = study["seeds"]["balance_point"]
    assert study["seeds"]["seeds"] == [2, 3]
    assert spread["sd"] == pytest.approx(statistics.stdev(points))
    assert spread["sd"] == pytest.approx(abs(points[0] - points[1]) / math.sqrt(2))  # n = 2 by hand
    assert spread["mean"] == pytest.approx(statistics.fmean(points))
    assert (spread["min"], spread["max"]) == (min(points), max(points))
    assert spread["mean_ci_half_width"] == pytest.approx(statistics.fmean((c[1] - c[0]) / 2 for c in cis))
    page = (runs / "seeds" / "report.html").read_text()
    assert "<h2>Seeds</h2>" in page and f"SD {spread['sd']:.3f}" in page


def test_a_seed_without_a_balance_point_is_counted_not_invented():
    spread = seed_spread([-0.5, None, -0.1], [[-0.9, -0.2], None, [-0.3, 0.2]])
    assert spread["n_seeds"] == 3 and spread["n_with_balance_point"] == 2
    assert spread["sd"] == pytest.approx(0.4 / math.sqrt(2)) and spread["range"] == pytest.approx(0.4)
    assert spread["mean_ci_half_width"] == pytest.approx((0.35 + 0.25) / 2)
    one = seed_spread([0.2, None], [None, None])
    assert one["sd"] is None and one["note"]


@pytest.mark.parametrize("value, words", [("0,0", "twice"), ("3", "at least two"), ("0,x", "integers")])
def test_bad_seeds_are_refused_while_parsing(value, words, tmp_path, capsys):
    assert _code(["run", "--seeds", value, "--out", str(tmp_path / "s")]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "s").exists()
