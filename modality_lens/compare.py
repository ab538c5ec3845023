"""``modality-lens compare RUN_DIR...``: one report over several runs (models, seeds or datasets).

:func:`compare_runs` reads each main-job run directory (its summary.json, or the committed
chunks summarised in memory, as the report does), checks that the runs used the same dataset,
and writes into ``--out``: ``compare.json`` (one row of headline numbers per run, read from
each run's summary), ``figures/compare_*.png`` (the runs overlaid: following curves with their
Wilson bands and logistic fits, balance points with their bootstrap CIs, oscillation means per
region) and a self-contained ``report.html`` that also embeds every figure of every run.

Dataset identity **[ours]**: two runs used the same dataset when their generator (a built-in
set's name, or the ``generator`` of a dataset folder's dataset.json) and its parameters are
equal, the seed and ``--limit`` left out: a seed-only difference is the point of a comparison
over seeds, and a limit only takes a prefix of the same cases (the kept counts say how many).
A folder whose generator cannot be read is identified by its content hash. Runs on different
datasets are refused unless ``allow_mixed``: their balance points mix the model's preference
with the tasks' difficulty.

Nothing is written before every run has been read and checked; the runs themselves are never
written to (a run whose figures are missing gets them drawn under ``--out``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from interp.errors import ArgumentError, RunDirError
from modality_lens.atomic import atomic_write_bytes, json_text
from modality_lens.figure_base import RunData
from modality_lens.plots import FIGURES
from modality_lens.report import REPORT_CSS, figures_html, html_table
from modality_lens.rundir import RunDir

__all__ = ["COMPARE_FILE", "CompareRun", "compare_rows", "compare_runs", "dataset_identity", "load_runs"]

COMPARE_FILE = "compare.json"
_NOT_IDENTITY = ("seed", "limit")


class CompareRun:
    """One run of a comparison: its folder, a label for tables and legends, its data."""

    def __init__(self, path: Path, label: str, data: RunData) -> None:
        self.path, self.label, self.data = path, label, data

    @property
    def summary(self) -> dict[str, Any]:
        return self.data.summary

    @property
    def info(self) -> dict[str, Any]:
        return self.data.run_info


def dataset_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' datasets the same (module docstring): generator + parameters, no seed."""
    job = {} if info.get("job") in (None, "run") else {"job": info["job"]}  # the typographic passes differ
    return {**job, **_data_identity(info.get("dataset") or {})}


def _data_identity(dataset: dict[str, Any]) -> dict[str, Any]:
    source = str(dataset.get("source") or "")
    params = {k: v for k, v in (dataset.get("parameters") or {}).items() if k not in _NOT_IDENTITY}
    if source.startswith("builtin:"):
        return {"generator": params.pop("generator", source.removeprefix("builtin:")), "parameters": params}
    generator = None
    try:
        generator = json.loads((Path(source) / "dataset.json").read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        pass
    if generator is None:
        return {"hash": dataset.get("hash")}
    return {"generator": generator, "parameters": params}


def _identity_text(identity: dict[str, Any]) -> str:
    if "job" in identity:
        return f"{identity['job']}: " + _identity_text({k: v for k, v in identity.items() if k != "job"})
    if "hash" in identity:
        return f"dataset {identity['hash']}"
    params = ", ".join(f"{k} {v}" for k, v in sorted(identity["parameters"].items()))
    return f"{identity['generator']} ({params})" if params else str(identity["generator"])


def load_runs(paths: Sequence[str | Path]) -> list[CompareRun]:
    """Each path as a :class:`CompareRun`; refuses a missing folder, a repeated one, a non-main-job run."""
    runs, seen = [], {}
    for i, text in enumerate(paths):
        path = Path(text)
        if not (path / "run.json").is_file():
            raise RunDirError(f"{text}: not a run directory (no run.json); pass the --out folder of a "
                              "`modality-lens run`")
        key = path.resolve()
        if key in seen:
            raise ArgumentError(f"{text} is given twice (as run {seen[key] + 1} and run {i + 1}); give each run once")
        seen[key] = i
        job = RunDir(path).read_run_info().get("job")
        if job not in (None, "run", "typographic"):
            raise RunDirError(f"{text} is a `modality-lens {job}` run; compare takes runs of `modality-lens run`")
        runs.append(CompareRun(path, f"{i + 1}: {path.name}", RunData.load(path)))
    return runs


def check_datasets(runs: Sequence[CompareRun], allow_mixed: bool) -> bool:
    """Whether the runs' datasets differ; raises ArgumentError when they do and `allow_mixed` is off."""
    identities = [dataset_identity(r.info) for r in runs]
    mixed = any(i != identities[0] for i in identities[1:])
    if mixed and not allow_mixed:
        listed = "; ".join(f"{r.label} used {_identity_text(i)}" for r, i in zip(runs, identities))
        raise ArgumentError(
            f"the runs used different datasets ({listed}): their balance points would mix the model's preference "
            "with the tasks' difficulty. Compare runs of one dataset (seeds may differ), or pass --allow-mixed "
            "to compare them anyway")
    return mixed


def _ci_pair(ci: Any) -> list[float] | None:
    return [float(ci[0]), float(ci[1])] if ci else None


def compare_row(run: CompareRun) -> dict[str, Any]:
    """The headline numbers of one run, each read from its summary (nothing recomputed)."""
    s, info = run.summary, run.info
    osc = s["oscillation"]
    region = {name: {"mean": osc[name]["mean"], "ci": _ci_pair(osc[name]["ci"]), "n": osc[name]["n"]}
              for name in ("ambiguous", "clear")}
    for name, entry in (s.get("controls") or {}).items():
        region[name] = {"mean": entry["mean"], "ci": _ci_pair(entry["ci"]), "n": entry["n"]}
    model = info.get("model") or {}
    return {
        "label": run.label, "path": str(run.path), "model": model.get("source"), "class": model.get("class"),
        "dataset": _identity_text(dataset_identity(info)), "dataset_source": (info.get("dataset") or {}).get("source"),
        "seed": info.get("seed"), "n_cases": s["n_cases"], "n_conflict": s["n_conflict"], "n_kept": s["n_kept"],
        "labels_kept": dict(s["filter"]["labels_kept"]), "tfr": s["tfr"], "vfr": s["vfr"],
        "balance_point": s["balance_point"], "balance_point_ci": _ci_pair(s["balance_point_ci"]),
        "curve_status": s["curve_status"], "isotonic_balance_point": s["isotonic_balance_point"],
        "spearman_rho": s["spearman_rho"], "oscillation": region,
        "oscillation_difference": osc["difference"], "oscillation_difference_ci": _ci_pair(osc["difference_ci"]),
        "curve": {k: (s.get("curve") or {}).get(k) for k in ("n", "a", "b", "dh_rel_min", "dh_rel_max", "bins")},
    }


def compare_rows(runs: Sequence[CompareRun]) -> list[dict[str, Any]]:
    """:func:`compare_row` of every run, in the order given."""
    return [compare_row(r) for r in runs]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return str(v) if isinstance(v, int) else f"{v:.{digits}f}"


def _with_ci(v: Any, ci: Any, digits: int = 3) -> str:
    return _fmt(v, digits) + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The comparison table (one line per run) as text cells, shared by report.html and the terminal."""
    out = []
    for r in rows:
        labels = r["labels_kept"]
        bp = (_with_ci(r["balance_point"], r["balance_point_ci"]) if r["balance_point"] is not None
              else f"none ({r['curve_status'].replace('_', ' ')})")
        osc = r["oscillation"]
        out.append([r["label"], str(r["model"]), r["dataset"], str(r["seed"]),
                    f"{r['n_kept']} of {r['n_conflict']} (text {labels.get('text', 0)}, vision "
                    f"{labels.get('vision', 0)}, other {labels.get('other', 0)})",
                    f"{_fmt(r['tfr'])} / {_fmt(r['vfr'])}", bp, _fmt(r["isotonic_balance_point"]),
                    _with_ci(osc["ambiguous"]["mean"], osc["ambiguous"]["ci"], 2) + f" (n {osc['ambiguous']['n']})",
                    _with_ci(osc["clear"]["mean"], osc["clear"]["ci"], 2) + f" (n {osc['clear']['n']})"])
    return out


TABLE_HEADER = ["run", "model", "dataset", "seed", "kept of conflict", "TFR / VFR", "balance point [95% CI]",
                "isotonic", "oscillations, ambiguous [95% CI]", "oscillations, clear [95% CI]"]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table as plain text, one block per run (for the terminal)."""
    lines = []
    for cells in table_rows(rows):
        lines.append(cells[0])
        lines += [f"  {h:<34} {c}" for h, c in zip(TABLE_HEADER[1:], cells[1:])]
    return "\n".join(lines)


def _out_folder(out: Path) -> None:
    """Refuse an --out that is a file, a run directory, or a folder with a report.html compare did not write."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} is a file; give a folder for the comparison")
    if (out / "run.json").exists():
        raise ArgumentError(f"--out {out} is a run directory; give another folder (e.g. {out.parent / 'compare'})")
    if (out / "report.html").exists() and not (out / COMPARE_FILE).exists():
        raise ArgumentError(f"--out {out} holds a report.html that compare did not write; give another folder")


def _run_figures(run: CompareRun, out: Path, index: int) -> list[tuple[Path, str]]:
    """Every figure of the run: its own PNG where it exists, else drawn under --out (the run is not written)."""
    figures = []
    for name, draw, caption in FIGURES:
        path = run.path / "figures" / f"{name}.png"
        if not path.exists():
            path = draw(run.data, out / "figures" / f"run{index + 1}" / f"{name}.png")
        figures.append((path, f"{run.label}: {caption}"))
    return figures


def compare_runs(paths: Sequence[str | Path], *, out: str | Path, allow_mixed: bool = False,
                 extra: dict[str, Any] | None = None, extra_html: Sequence[str] = ()) -> dict[str, Any]:
    """Compare the runs at `paths`; write compare.json, figures/ and report.html under `out`.

    `extra` adds keys to compare.json (the seeds study adds its spread) and `extra_html` sections
    to the report. Returns the compare.json content.

    Raises:
        RunDirError: a path is not a main-job run directory or its records are damaged.
        ArgumentError: the runs used different datasets without `allow_mixed`, a run is given twice,
            or `out` cannot hold the comparison. Nothing is written in either case.
    """
    from modality_lens.compare_figures import COMPARE_FIGURES

    runs = load_runs(paths)
    mixed = check_datasets(runs, allow_mixed)
    out = Path(out)
    _out_folder(out)
    rows = compare_rows(runs)
    result = {"runs": rows, "mixed_datasets": mixed, "allow_mixed": allow_mixed, **(extra or {})}
    drawn = [(draw(rows, out / "figures" / f"{name}.png"), caption) for name, draw, caption in COMPARE_FIGURES]
    per_run = [fig for i, run in enumerate(runs) for fig in _run_figures(run, out, i)]
    atomic_write_bytes(out / COMPARE_FILE, json_text(result).encode())
    atomic_write_bytes(out / "report.html", _report_html(rows, mixed, drawn, per_run, extra_html).encode("utf-8"))
    return result


def _report_html(rows: Sequence[dict[str, Any]], mixed: bool, drawn: list[tuple[Path, str]],
                 per_run: list[tuple[Path, str]], extra_html: Sequence[str]) -> str:
    warn = ('<p class="warn">These runs used different datasets (--allow-mixed): their balance points mix the '
            "model's preference with the tasks' difficulty.</p>") if mixed else ""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>modality-lens compare: {len(rows)} runs</title>", f"<style>{REPORT_CSS}</style></head><body>",
             f"<h1>modality-lens compare: {len(rows)} runs</h1>",
             '<p class="muted">Every number is read from the run\'s own summary.json; ΔH_rel = 2 (H_t − H_v) / '
             "(H_t + H_v); intervals are 95% (Wilson for binned P(follow text), percentile bootstrap over cases for "
             "the balance point and the oscillation means).</p>", warn,
             "<h2>Runs</h2>", html_table(TABLE_HEADER, table_rows(rows), numeric_from=3), *extra_html]
    parts += figures_html(drawn)
    parts[-len(drawn) - 1] = "<h2>Figures over the runs</h2>"
    parts += ["<h2>Every figure of every run</h2>"] + figures_html(per_run)[1:]
    parts += [f'<p class="muted">Runs: {html.escape(", ".join(r["path"] for r in rows))}.</p>', "</body></html>"]
    return "\n".join(parts) + "\n"


def compare_main(paths: Sequence[str], *, out: str | None, allow_mixed: bool) -> int:
    """``modality-lens compare``: compare, print the table, say where the report is."""
    target = Path(out) if out else Path("runs") / "compare"
    result = compare_runs(paths, out=target, allow_mixed=allow_mixed)
    print(format_table(result["runs"]))
    print(f"report: {(target / 'report.html').resolve()}")
    return 0
