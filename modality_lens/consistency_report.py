"""Figures and report.html of a consistency run, drawn from its summary.json and run.json alone.

Figures (``figures/``): accuracy per format (95% CIs) per variant; RER / CFR / MMC with CIs on
all items and on the OCR-gated subset; the cosine of rendered and text tokens and the retrieval
accuracy per lens layer; the per-format lens (agreement of the lens top-1 with the text
format's, and the answer's log-probability) per layer. The figures show the default variant
(else the first one); the tables give every variant.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from interp.consistency import FORMATS
from modality_lens.atomic import atomic_write_bytes
from modality_lens.plots import figure_note, new_figure, save_figure
from modality_lens.report import REPORT_CSS, figures_html, html_table, notes_html, provenance_rows

__all__ = ["CONSISTENCY_FIGURES", "draw_consistency_figures", "metric_rows", "write_consistency_report"]

CONSISTENCY_FIGURES = (
    ("consistency_accuracy", "Accuracy per format (text, image: the whole problem rendered, mixed: the context "
     "rendered), per rendering variant; bars: 95% bootstrap CIs over items."),
    ("consistency_metrics", "RER (identical answers in all formats), CFR (solved in some but not all, among items "
     "solved in one), MMC (solved in at least one) on all items and on the OCR-gated subset (CER = 0); 95% CIs."),
    ("consistency_similarity", "Per lens layer (0 = embedding): cosine of the mean hidden state over the rendered "
     "text's image tokens and over the same text's tokens (95% CIs), and retrieval accuracy among a chunk's items."),
    ("consistency_lens", "Per-format lens at the first generated token: share of items whose lens top-1 equals "
     "the text format's (left) and mean log p of the answer's first token (right), per layer."),
)


def _read(run_dir: Any) -> tuple[dict[str, Any], dict[str, Any], Path]:
    path = Path(getattr(run_dir, "path", run_dir))
    return json.loads((path / "summary.json").read_text()), json.loads((path / "run.json").read_text()), path


def _main_variant(s: dict) -> tuple[str, dict] | tuple[None, None]:
    if not s["variants"]:
        return None, None
    name = "default" if "default" in s["variants"] else sorted(s["variants"])[0]
    return name, s["variants"][name]


def _err(entries: list[dict], key: str = "mean") -> tuple[list[float], np.ndarray]:
    v = [e[key] if e and e.get(key) is not None else np.nan for e in entries]
    lo = [e["ci_low"] if e and e.get("ci_low") is not None else np.nan for e in entries]
    hi = [e["ci_high"] if e and e.get("ci_high") is not None else np.nan for e in entries]
    return v, np.nan_to_num(np.array([np.subtract(v, lo), np.subtract(hi, v)]), nan=0.0)


def _accuracy(s: dict, out: Path) -> Path:
    fig = new_figure(max(4.0, 0.9 * len(s["variants"]) + 2), 3.4)
    ax = fig.subplots()
    names = sorted(s["variants"])
    if not names:
        figure_note(ax, "no rows")
    for k, fmt in enumerate(FORMATS):
        v, e = _err([s["variants"][n]["accuracy_all_items"][fmt] for n in names])
        ax.bar(np.arange(len(names)) + (k - 1) * 0.27, v, 0.27, yerr=e, label=fmt, capsize=2)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="accuracy", ylim=(0, 1.05))
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def _metrics(s: dict, out: Path) -> Path:
    fig = new_figure(5.0, 3.4)
    ax = fig.subplots()
    name, v = _main_variant(s)
    for k, subset in enumerate(("all", "ocr_gated")):
        m = (v or {}).get(subset)
        if not m:
            continue
        vals, e = _err([m[key] for key in ("rer", "cfr", "mmc")], "value")
        ax.bar(np.arange(3) + (k - 0.5) * 0.38, vals, 0.38, yerr=e, capsize=3,
               label=f"{subset} (n = {m['n']})")
    ax.set_xticks(range(3), ["RER", "CFR", "MMC"])
    ax.set(ylim=(0, 1.05), title=f"variant {name}")
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def _similarity(s: dict, out: Path) -> Path:
    fig = new_figure(8.0, 3.2)
    a, b = fig.subplots(1, 2)
    _, v = _main_variant(s)
    layers = (v or {}).get("layers", {})
    drawn = False
    for k, fmt in enumerate(("image", "mixed")):
        entry = layers.get(fmt, {})
        if "cosine" not in entry:
            continue
        drawn = True
        mean, e = _err(entry["cosine"])
        x = np.arange(len(mean))
        a.errorbar(x, mean, yerr=e, fmt="o-", ms=3, color=f"C{k}", label=fmt, capsize=2)
        b.plot(x, entry["retrieval_i2t"], "o-", ms=3, color=f"C{k}", label=f"{fmt}: image -> text")
        b.plot(x, entry["retrieval_t2i"], "s--", ms=3, color=f"C{k}", label=f"{fmt}: text -> image")
    if not drawn:
        figure_note(a, "no rendered rows")
    a.set(xlabel="layer", ylabel="cosine")
    b.set(xlabel="layer", ylabel="retrieval accuracy", ylim=(-0.02, 1.02))
    for ax in (a, b):
        if drawn:
            ax.legend(fontsize=7)
    return save_figure(fig, out)


def _lens(s: dict, out: Path) -> Path:
    fig = new_figure(8.0, 3.2)
    a, b = fig.subplots(1, 2)
    _, v = _main_variant(s)
    for k, fmt in enumerate(FORMATS):
        entry = ((v or {}).get("layers") or {}).get(fmt)
        if not entry:
            continue
        x = np.arange(len(entry["agreement_with_text"]))
        a.plot(x, entry["agreement_with_text"], "o-", ms=3, color=f"C{k}", label=fmt)
        mean, e = _err(entry["log_p_answer"])
        b.errorbar(x, mean, yerr=e, fmt="o-", ms=3, color=f"C{k}", label=fmt, capsize=2)
    a.set(xlabel="layer", ylabel="top-1 = text format's", ylim=(-0.02, 1.02))
    b.set(xlabel="layer", ylabel="log p(answer's first token)")
    a.legend(fontsize=7)
    return save_figure(fig, out)


def draw_consistency_figures(run_dir: Any) -> list[Path]:
    """Every figure of :data:`CONSISTENCY_FIGURES` into ``RUN/figures/``."""
    s, _, path = _read(run_dir)
    draw = (_accuracy, _metrics, _similarity, _lens)
    return [fn(s, path / "figures" / f"{name}.png") for fn, (name, _) in zip(draw, CONSISTENCY_FIGURES)]


def _fmt(m: dict | None, key: str = "value") -> str:
    if not m or m.get(key) is None:
        return "n/a"
    ci = f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m.get("ci_low") is not None else ""
    return f"{m[key]:.3f}{ci}"


def metric_rows(s: dict) -> list[list[str]]:
    """One table row per variant x subset: n, RER, CFR, MMC, accuracy per format, invalid answers."""
    rows = []
    for name, v in sorted(s["variants"].items()):
        for subset in ("all", "ocr_gated"):
            m = v.get(subset)
            if m is None:
                rows.append([name, subset, "0", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", ""])
                continue
            rows.append([name, subset, str(m["n"]), _fmt(m["rer"]), _fmt(m["cfr"]), _fmt(m["mmc"]),
                         *(_fmt(m["accuracy"][f]) for f in FORMATS),
                         ", ".join(f"{f} {n}" for f, n in m["invalid"].items())])
    return rows


def write_consistency_report(run_dir: Any) -> Path:
    """``RUN/report.html``: the metric table, every figure as base64 PNG, provenance."""
    s, info, path = _read(run_dir)
    figures = path / "figures"
    if not all((figures / f"{n}.png").exists() for n, _ in CONSISTENCY_FIGURES):
        draw_consistency_figures(run_dir)
    header = ["variant", "subset", "n", "RER", "CFR", "MMC", *(f"acc. {f}" for f in FORMATS), "invalid"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>modality-lens consistency: {html.escape(path.name)}</title>",
             f"<style>{REPORT_CSS}</style></head><body>",
             f"<h1>Cross-modal consistency <code>{html.escape(path.name)}</code></h1>",
             '<p class="muted">The same items as text, rendered whole (image) and with the context rendered (mixed); '
             "answers by greedy generation and parsing (an unparsable answer is invalid and wrong); intervals are "
             "95% percentile bootstraps over items; the OCR-gated subset holds the items whose rendered images the "
             "model transcribed with CER 0.</p>", html_table(header, metric_rows(s), numeric_from=2)]
    for name, v in sorted(s["variants"].items()):
        parting = {f: e.get("parting_layer") for f, e in v["layers"].items() if f != "text"}
        parts.append(f"<p>{html.escape(name)}: tier-0 accuracy of the mixed format "
                     f"{html.escape(_fmt(v['tier0_mixed_accuracy'], 'mean'))}; parting layer (lens top-1 leaves the "
                     f"text format's) {html.escape(json.dumps(parting))}; CER {html.escape(json.dumps(v['cer']))}</p>")
    parts += notes_html(list(s.get("notes") or [])) + figures_html([(figures / f"{name}.png", caption)
                                                                     for name, caption in CONSISTENCY_FIGURES])
    parts += ["<h2>Provenance</h2>", html_table(["", ""], provenance_rows(info), numeric_from=2), "</body></html>"]
    atomic_write_bytes(path / "report.html", ("\n".join(parts) + "\n").encode("utf-8"))
    return path / "report.html"

