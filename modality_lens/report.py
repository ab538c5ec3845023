"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no external resource).

:func:`report_main` is what ``modality-lens report RUN_DIR`` runs: finalize the run when its
consolidated tables are missing or stale, draw every figure, write report.html, print the key
numbers. :func:`format_summary` gives the same short table for ``modality-lens run`` to print.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from interp.errors import RunDirError
from modality_lens.finalize import finalize
from modality_lens.plots import FIGURES, RunData, draw_all
from modality_lens.atomic import atomic_write_bytes
from modality_lens.rundir import RunDir

__all__ = ["format_summary", "report_main", "write_report"]

REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666; font-size: 0.9em; } .warn { color: #a00000; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 900px; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def _ci(ci: Any, digits: int = 3) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def _mean_ci(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return f"n/a (n = {entry['n']})"
    return f"{entry['mean']:.2f} {_ci(entry['ci'], 2)} (n = {entry['n']})".replace("  ", " ")


def key_numbers(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows of the key numbers, shared by the HTML table and :func:`format_summary`."""
    s = summary
    f = s["filter"]
    dropped = ", ".join(f"{k} {v}" for k, v in f["dropped"].items() if v) or "none"
    controls = ", ".join(f"{k} {v}" for k, v in s["n_controls"].items() if v) or "none"
    bp = s["balance_point"]
    bp_text = (f"{bp:.3f} {_ci(s['balance_point_ci'])}" if bp is not None
               else f"none ({s['curve_status'].replace('_', ' ')})")
    iso = s["isotonic_balance_point"]
    osc = s["oscillation"]
    p_value = s["monotonicity"]["spearman_p"]
    p_text = "n/a" if p_value is None else f"{p_value:.2g}"
    rows = [
        ("cases", f"{s['n_cases']} ({s['n_conflict']} conflict; controls: {controls})"),
        ("kept (correct in both)", f"{s['n_kept']} of {s['n_conflict']} conflict; dropped: {dropped}"),
        ("labels of kept cases", ", ".join(f"{k} {v}" for k, v in f["labels_kept"].items())),
        ("TFR / VFR", f"{_num(s['tfr'])} / {_num(s['vfr'])}"),
        ("balance point (logistic, 95% CI)", bp_text),
        ("balance point (isotonic)", _num(iso) if iso is not None else "no crossing in the observed range"),
        ("Spearman ρ (ΔH_rel, follows text)", f"{_num(s['spearman_rho'])} (p = {p_text})"),
        ("share of decreasing adjacent bins", _num(s["monotonicity"]["share_decreasing"], 2)),
        ("oscillations, ambiguous", _mean_ci(osc["ambiguous"])),
        ("oscillations, clear", _mean_ci(osc["clear"])),
        ("ambiguous − clear", f"{_num(osc['difference'], 2)} {_ci(osc['difference_ci'], 2)}".strip()),
    ]
    without = s.get("oscillation_without_constant")
    if without:
        rows.append(("oscillations without constant layers, ambiguous / clear",
                     f"{_mean_ci(without['ambiguous'])} / {_mean_ci(without['clear'])}"))
    for name, entry in s["controls"].items():
        rows.append((f"oscillations, {name.replace('_', '-')} control", _mean_ci(entry)))
    r = s["robustness"]
    rows.append(("balance point, low / high H_t + H_v half",
                 f"{_num(r['low']['balance_point'])} / {_num(r['high']['balance_point'])} "
                 f"(median {_num(r['median_total_entropy'], 2)} nats)"))
    for name, entry in (s.get("indices") or {}).items():
        if name != "entropy":
            rows.append((f"balance point, {name} (ρ)", f"{_num(entry['balance_point'])} "
                         f"{_ci(entry['balance_point_ci'])} (ρ {_num(entry['spearman_rho'], 2)})".replace("  ", " ")))
    depth = s.get("oscillation_depth") or {}
    for key, what in (("by_outcome", ""), ("by_outcome_without_constant", " without constant layers")):
        for label in ("text", "vision"):
            e = (depth.get(key) or {}).get(label)
            if e:
                rows.append((f"oscillations{what}, {label}-followers: ambiguous / clear",
                             f"{_num(e['ambiguous']['mean'], 2)} / {_num(e['clear']['mean'], 2)} "
                             f"(n = {e['ambiguous']['n']} / {e['clear']['n']})"))
    if "constant_layers" in depth:
        rows.append(("constant layers (same top-1 in every row)", _constant_text(depth["constant_layers"])))
    return rows


def _constant_text(diagnostic: dict[str, Any]) -> str:
    named = [f"{r['layer']} ({r['token']!r})" if r.get("token") is not None else str(r["layer"])
             for r in diagnostic["layers"] if r["layer"] in diagnostic["flagged"]]
    return ", ".join(named) or "none"


PAPER = "Zhang et al., arXiv 2511.02243"


def _agrees(value: float | None, sign: int) -> str:
    return "n/a" if value is None else ("yes" if value * sign > 0 else "no")


def paper_rows(s: dict[str, Any]) -> list[list[str]]:
    """(headline, this run, the paper's published value or sign, same sign?) rows."""
    osc, depth = s["oscillation"], s.get("oscillation_depth") or {}
    rows = [["Spearman ρ(ΔH_rel, follows text)", _num(s["spearman_rho"], 2),
             "negative: P(follow text) falls as ΔH_rel rises (the law)", _agrees(s["spearman_rho"], -1)],
            ["balance point", _num(s["balance_point"], 2),
             "model-specific; below 0 = an inherent vision preference, above 0 = a text preference", "-"]]
    rows.append(["oscillations, ambiguous − clear", _num(osc["difference"], 2),
                 "+0.72 (1.43 vs 0.71, LLaVA-1.6-7B): ambiguous cases oscillate more", _agrees(osc["difference"], 1)])
    for key, what in (("by_outcome", ""), ("by_outcome_without_constant", ", without constant layers")):
        for label in ("text", "vision"):
            e = (depth.get(key) or {}).get(label)
            if e:
                rows.append([f"ambiguous − clear within {label}-followers{what}", _num(e["difference"], 2),
                             "positive (the paper's direction)", _agrees(e["difference"], 1)])
    control = (s.get("controls") or {}).get("text_irrelevant") or {}
    if control.get("mean") is not None:
        rows.append(["oscillations, text-irrelevant control", _num(control["mean"], 2),
                     "0.35 (LLaVA-1.5-7B), below both regions", "-"])
    for name, entry in (s.get("indices") or {}).items():
        if name != "entropy":
            rows.append([f"Spearman ρ, {name}", _num(entry["spearman_rho"], 2),
                         "negative: the law holds across uncertainty indices", _agrees(entry["spearman_rho"], -1)])
    return rows


def definitions_html(s: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """What the report's words mean in this run: the regions, the intervals, the layers counted."""
    p, depth = s["parameters"], s.get("oscillation_depth") or {}
    n_layers = s.get("n_layers_model") or (info.get("model") or {}).get("n_layers") or depth.get("n_layers")
    counted = depth.get("layers_counted")
    text = (f"<p><b>Ambiguous region</b>: kept conflict cases with |ΔH_rel − balance point| ≤ {p['region_width']:g} "
            f"(<code>--region-width</code>, the paper's 0.5 by default); <b>clear</b>: the other kept conflict cases. "
            f"Intervals: {int(p['ci_level'] * 100)}% percentile bootstrap over cases, {p['n_boot']} resamples "
            f"(<code>--n-boot</code>), seed {p['seed']}. The model has <b>{n_layers} decoder layers</b>; the lens "
            "reads position 0 (the embedding output) and 1.. (after each decoder layer); a switch is counted "
            f"over positions {counted if counted else 'of every decoder layer'} (<code>--layers</code>). "
            "Constant layers (the same top-1 for every row of the run): "
            f"{html.escape(_constant_text(depth['constant_layers'])) if 'constant_layers' in depth else 'n/a'}; "
            "every oscillation number is also given without them.</p>")
    table = html_table(["headline", "this run", f"paper ({PAPER})", "same sign"], paper_rows(s), numeric_from=1)
    return ["<h2>Definitions</h2>", text, "<h2>Beside the paper</h2>", table]


def format_summary(summary: dict[str, Any]) -> str:
    """The key numbers as a plain-text table (for the terminal)."""
    rows = key_numbers(summary)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines + [f"warning: {w}" for w in summary.get("warnings") or []])


def html_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table, every cell escaped; columns from `numeric_from` on are right-aligned numbers."""
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = "".join(
            ('<td class="num">' if i >= numeric_from else "<td>") + html.escape(str(c)) + "</td>"
            for i, c in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _tier_rows(tiers: list[dict[str, Any]]) -> list[list[str]]:
    return [[str(t["tier"]), str(t["n"]), f"{_num(t['accuracy'], 2)} {_ci(t['accuracy_ci'], 2)}".strip(),
             f"{_num(t['mean_entropy'], 2)} ± {_num(t['sd_entropy'], 2)}", str(t["n_kept"]), _num(t["tfr"], 2)]
            for t in tiers]


def notes_html(notes: list[str]) -> list[str]:
    """The report's Notes section (nothing when there are none)."""
    if not notes:
        return []
    return ["<h2>Notes</h2><ul>" + "".join(f'<li class="warn">{html.escape(n)}</li>' for n in notes) + "</ul>"]


def figures_html(figures: list[tuple[Path, str]]) -> list[str]:
    """The report's Figures section: each (PNG path, caption) embedded as base64."""
    parts = ["<h2>Figures</h2>"]
    for path, caption in figures:
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return parts


def provenance_rows(info: dict[str, Any]) -> list[list[str]]:
    """The report's provenance table rows (model, dataset, toolkit commit, libraries, arguments) of run.json."""
    model, dataset = info.get("model") or {}, info.get("dataset") or {}
    tool = info.get("toolkit") or {}
    git = tool.get("git") or {}
    libs = info.get("libraries") or {}
    args = info.get("arguments") or {}
    commit = (git.get("commit") or "")[:12] + (" (dirty)" if git.get("dirty") else "") if git else "not a git checkout"
    return [
        ["model", f"{model.get('source')}  [{model.get('weights_hash')}]"],
        ["dataset", f"{dataset.get('source', dataset.get('name'))}  [{dataset.get('hash')}]"],
        ["seed", str(info.get("seed"))],
        ["arguments", ", ".join(f"{k}={v}" for k, v in args.items())],
        ["device", str(info.get("device"))],
        ["created", f"{info.get('created')}; resumed {len(info.get('resumes') or [])} time(s)"],
        ["toolkit", f"modality-lens {tool.get('version')}, commit {commit}"],
        ["libraries", ", ".join(f"{k} {v}" for k, v in libs.items() if v)],
    ]


def _figures(run: RunDir) -> list[tuple[Path, str]]:
    known = [(run.figures_dir / f"{name}.png", caption) for name, _, caption in FIGURES]
    if not all(p.exists() for p, _ in known):
        draw_all(run)
    names = {p.name for p, _ in known}
    extra = sorted(p for p in run.figures_dir.glob("*.png") if p.name not in names)
    return known + [(p, p.stem.replace("_", " ")) for p in extra]


def write_report(run_dir: RunDir | str | Path) -> Path:
    """Write ``RUN/report.html`` (figures drawn first if any is missing) and return its path.

    The page holds the provenance, the key numbers, the filter counts, the per-tier tables,
    every note of the summary, and every figure of ``figures/`` embedded as a base64 PNG; it
    loads nothing from outside the file.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    data = RunData.load(run)
    s, info = data.summary, data.run_info
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>modality-lens run: {html.escape(run.path.name)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>modality-lens run <code>{html.escape(run.path.name)}</code></h1>",
        '<p class="muted">Which modality does the model follow under conflict, and where is it decided? '
        "ΔH_rel = 2 (H_t − H_v) / (H_t + H_v); entropies in nats; intervals are 95%.</p>",
        "<h2>Key numbers</h2>",
        html_table(["", "value"], [[k, v] for k, v in key_numbers(s)], numeric_from=2),
    ]
    notes = list(s.get("notes") or [])
    for where, note in (("oscillation", s["oscillation"].get("note")),
                        ("robustness, low half", s["robustness"]["low"].get("note")),
                        ("robustness, high half", s["robustness"]["high"].get("note"))):
        if note:
            notes.append(f"{where}: {note}")
    parts += definitions_html(s, info) + notes_html(notes) + figures_html(_figures(run))
    tiers = s["tiers"]
    header = ["tier", "cases", "accuracy [95% CI]", "mean entropy ± SD (nats)", "kept", "TFR (kept)"]
    parts += [
        "<h2>Tiers</h2>",
        "<p>Visual tiers: vision-only pass (accuracy of Y_v, H_v).</p>", html_table(header, _tier_rows(tiers["visual"])),
        "<p>Text tiers: text-only pass (accuracy of Y_t, H_t).</p>", html_table(header, _tier_rows(tiers["text"])),
        f'<p class="muted">{html.escape(tiers["note"])}</p>',
        "<h2>Provenance</h2>",
        html_table(["", ""], provenance_rows(info), numeric_from=2),
        f'<p class="muted">Records: cases.parquet, layers.parquet, summary.json and run.json in '
        f"<code>{html.escape(str(run.path))}</code>.</p>",
        "</body></html>",
    ]
    atomic_write_bytes(run.report_path, ("\n".join(parts) + "\n").encode("utf-8"))
    return run.report_path


SUMMARY_KEYS = ("indices", "oscillation_depth")
"""Summary keys newer than the first release: a summary.json without them is recomputed."""


def report_main(run_dir: str, *, n_boot: int | None = None, region_width: float | None = None,
                layers: list[int] | None = None) -> int:
    """``modality-lens report RUN_DIR``: finalize if needed, draw the figures, write report.html, print key numbers.

    The summary is recomputed from the records when it is missing, stale, older than
    :data:`SUMMARY_KEYS`, or when ``n_boot``, ``region_width`` or ``layers`` is given (None: as the
    run recorded).

    Returns:
        0 on success.

    Raises:
        RunDirError: ``run_dir`` is not a run directory (no run.json) or its records are damaged.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory; pass the --out folder of a `modality-lens run`")
    run.read_run_info()
    overrides = {"n_boot": n_boot, "region_width": region_width, "layers": layers}
    current = run.is_finalized() and all(k in run.read_summary() for k in SUMMARY_KEYS)
    if current and all(v is None for v in overrides.values()):
        summary = run.read_summary()
    else:
        summary = finalize(run, **overrides)
    draw_all(run)
    path = write_report(run)
    print(format_summary(summary))
    print(f"report: {path}")
    return 0
