"""What every figure module shares: the run's data as the figures need it, an Agg figure, saving, notes.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas: no pyplot, no
global backend switch, nothing left open. Colours: text = red, vision = blue, everywhere.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interp.summary import summarise, with_regions
from modality_lens.rundir import RunDir

__all__ = ["CLASS_COLOURS", "DPI", "IRRELEVANT_COLOUR", "TEXT_COLOUR", "VISION_COLOUR", "RunData", "figure_note",
           "new_figure", "save_figure"]

TEXT_COLOUR = "#d62728"
VISION_COLOUR = "#1f77b4"
IRRELEVANT_COLOUR = "#9a9a9a"
CLASS_COLOURS = {"text": TEXT_COLOUR, "vision": VISION_COLOUR, "irrelevant": IRRELEVANT_COLOUR}
DPI = 110


@dataclasses.dataclass(frozen=True)
class RunData:
    """What the figures need from a run: case rows (with ``region``), the summary, the conflict-pass layer rows.

    :meth:`load` reads the finalized files (cases.parquet, summary.json, layers.parquet) when
    they cover every committed case; otherwise it summarises the committed chunks in memory
    (with run.json's seed) and writes nothing.
    """

    cases: list[dict[str, Any]]
    summary: dict[str, Any]
    layers: pa.Table
    run_info: dict[str, Any]

    @classmethod
    def load(cls, run: "RunDir | str | Path | RunData") -> "RunData":
        if isinstance(run, RunData):
            return run
        run = run if isinstance(run, RunDir) else RunDir(run)
        info = run.read_run_info()
        if run.is_finalized():
            cases = run.read_final_cases()
            summary = run.read_summary()
            layers = pq.read_table(run.layers_path, filters=[("pass", "=", "conflict")])
        else:
            raw = run.read_cases()
            every = run.read_layers()
            args = info.get("arguments") or {}
            summary = summarise(raw, seed=int(info.get("seed") or 0), n_boot=int(args.get("n_boot") or 1000),
                                region_width=args.get("region_width", 0.5), layers=every,
                                counted_layers=args.get("layers"))
            cases = with_regions(raw, summary, every)
            layers = every.filter(pc.equal(every.column("pass"), "conflict"))
        return cls(cases=cases.to_pylist(), summary=summary, layers=layers, run_info=info)


def new_figure(width: float, height: float) -> Figure:
    """A `width` x `height` inch figure at the report's DPI, on an Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: str | Path) -> Path:
    """`fig` as a PNG at `out` (folders made; no software tag, so the bytes are reproducible)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out


def figure_note(ax: Axes, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, textwrap.fill(text, 48), ha="center", va="center", transform=ax.transAxes,
            fontsize=10, color="#444444")
