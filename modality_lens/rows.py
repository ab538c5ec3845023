"""The typed rows of a run: one `CaseRow` per case, one `LayerRow` per case x pass x lens layer.

The Parquet schemas of the run directory are derived from these dataclasses
(:func:`arrow_schema`): a column's type is its field's annotation (``str`` -> string, ``int`` ->
int64, ``float`` -> float64, ``bool`` -> bool), and a column may be null exactly when the
annotation admits ``None``. A row reads like a dict of its columns (``row["kept"]``, ``dict(row)``),
so code written against the plain dicts of earlier versions keeps working; ``pass`` and ``class``,
keywords in Python, are the columns of the fields ``pass_name`` and ``layer_class``.

`case_row` and `layer_rows` build them from a case's trajectories; `modality_lens.pipeline`
calls them for every case of a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pyarrow as pa

from interp.candidates import CandidatePair
from interp.errors import RunDirError
from interp.indices import pass_indices
from interp.logit_lens import Trajectory
from interp.oscillation import count_switches
from interp.uncertainty import dh_rel

__all__ = ["CaseRow", "LayerRow", "CASE_INDEX_COLUMNS", "CASE_SCHEMA", "LAYER_SCHEMA", "arrow_schema", "case_row",
           "layer_rows", "refuse_older_chunks"]


class _Row(Mapping):
    """Mapping view of a frozen dataclass: keys are column names, in field order."""

    COLUMNS: ClassVar[dict[str, str]] = {}  # field name -> column name, where they differ

    @classmethod
    def columns(cls) -> list[tuple[str, str]]:
        """(field name, column name) of every field, in order."""
        return [(f.name, cls.COLUMNS.get(f.name, f.name)) for f in dataclasses.fields(cls)]

    @classmethod
    @functools.cache
    def _field_of(cls) -> dict[str, str]:
        return {column: name for name, column in cls.columns()}

    def __getitem__(self, column: str) -> Any:
        try:
            return getattr(self, self._field_of()[column])
        except KeyError:
            raise KeyError(column) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_of())

    def __len__(self) -> int:
        return len(self._field_of())


@dataclasses.dataclass(frozen=True, eq=False)
class CaseRow(_Row):
    """One case of a run (cases.parquet).

    ``y_v`` / ``y_t`` / ``y_m``: the answers of the vision-only, text-only and conflict passes;
    ``class_*``: their lens class at the last layer; ``h_v`` / ``h_t``: entropies in nats;
    ``label`` in ``interp.vocabulary.LABELS``; ``control`` None for a conflict case, else one of
    ``interp.vocabulary.CONTROLS``; ``kept``: the case passed the correct-in-both filter;
    ``drop_reason`` None for a kept case, else one of ``interp.following.DROP_REASONS`` or
    "control" (the summary reads ``kept`` only for conflict cases: controls enter the
    controls' summary whatever the filter said); ``oscillations``: switches along the conflict
    pass (embedding output excluded), None when not computed; ``*_m``: the conflict pass's
    last-layer probabilities and logit difference; ``divergence_position``: tokens of the
    answers' common prefix (`interp.candidates`).

    The alternative uncertainty indices of the vision-only (``_v``) and text-only (``_t``) pass
    at the last layer (`interp.indices`, METHOD §1.2): ``h_cand_*`` the entropy over the case's
    two candidate answers, renormalised (nats); ``one_minus_max_p_*``; ``margin_*`` the top-2
    margin ``p_(1) - p_(2)``; ``nmlp_*`` the NMLP confidence over the top 20 (nats, higher =
    surer). They default to None, so rows of earlier versions (and hand-made rows) still load
    (:data:`CASE_INDEX_COLUMNS`).

    ``region`` is not a field: it depends on the balance point of the whole run and is added
    when the run is finalized (`modality_lens.finalize`).
    """

    case_id: str
    group_id: str | None
    visual_tier: int | None
    text_tier: int | None
    control: str | None
    image_answer: str | None
    text_answer: str | None
    y_v: str | None
    y_t: str | None
    y_m: str | None
    vision_correct: bool | None
    text_correct: bool | None
    h_v: float | None
    h_t: float | None
    dh_rel: float | None
    label: str | None
    kept: bool | None
    drop_reason: str | None
    oscillations: int | None
    task: str | None
    class_v: str | None
    class_t: str | None
    class_m: str | None
    p_text_m: float | None
    p_vision_m: float | None
    logit_diff_m: float | None
    divergence_position: int | None
    h_cand_v: float | None = None
    h_cand_t: float | None = None
    one_minus_max_p_v: float | None = None
    one_minus_max_p_t: float | None = None
    margin_v: float | None = None
    margin_t: float | None = None
    nmlp_v: float | None = None
    nmlp_t: float | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class LayerRow(_Row):
    """One lens layer of one pass of one case (layers.parquet).

    ``pass`` in ``interp.vocabulary.PASSES``; ``layer`` 0 is the embedding output, 1.. the
    decoder layers; ``class`` in ``interp.vocabulary.LAYER_CLASSES``; ``logit_diff`` =
    logit(text answer) - logit(image answer); ``entropy`` in nats.
    """

    COLUMNS: ClassVar[dict[str, str]] = {"pass_name": "pass", "layer_class": "class"}

    case_id: str
    pass_name: str
    layer: int
    layer_class: str | None
    top1: int | None
    p_text: float | None
    p_vision: float | None
    logit_diff: float | None
    entropy: float | None


_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def arrow_schema(row_type: type[_Row]) -> pa.Schema:
    """The Parquet schema of a row type: one column per field, typed and nullable by its annotation."""
    hints = typing.get_type_hints(row_type)
    fields = []
    for name, column in row_type.columns():
        hint = hints[name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        base = [a for a in args if a is not type(None)]
        if len(base) != 1 or base[0] not in _ARROW:
            raise TypeError(f"{row_type.__name__}.{name}: {hint} has no Parquet type")
        fields.append(pa.field(column, _ARROW[base[0]], nullable=len(base) < len(args)))
    return pa.schema(fields)


CASE_SCHEMA = arrow_schema(CaseRow)
"""Columns of every case row; extra columns may follow."""
CASE_INDEX_COLUMNS: tuple[str, ...] = tuple(f"{stem}_{p}" for stem in ("h_cand", "one_minus_max_p", "margin", "nmlp")
                                            for p in ("v", "t"))
"""The alternative-index columns (added after the first release): a row without them gets nulls."""


def refuse_older_chunks(path: Any, columns: Sequence[str], chunk_columns: Sequence[Sequence[str]]) -> None:
    """RunDirError when a committed chunk (its column names in ``chunk_columns``) lacks one of
    ``columns``: a resume would leave them null for its cases, and the summary would rest on the rest."""
    lacking = sorted({c for names in chunk_columns for c in columns if c not in names})
    if lacking:
        raise RunDirError(f"--resume refused: {path} was written by an older modality-lens whose case rows lack "
                          f"{lacking}; start afresh with another --out (or delete {path}); `modality-lens report "
                          f"{path}` still redraws the old run. Nothing was changed.")
LAYER_SCHEMA = arrow_schema(LayerRow)
"""Columns of every layer row."""


def case_row(case: Any, pair: CandidatePair, trajectories: Mapping[str, Trajectory],
             answers: Mapping[str, tuple[str, str]], drop_reason: str | None) -> CaseRow:
    """The row of one case from its three passes' trajectories and (answer, class) per pass.

    ``drop_reason``: the correct-in-both filter's reason (None: kept); a control case is never
    kept, whatever the filter said, because its text or question is about another shape by design.
    """
    tv, tt, tm = trajectories["vision"], trajectories["text"], trajectories["conflict"]
    (y_v, class_v), (y_t, class_t), (y_m, class_m) = answers["vision"], answers["text"], answers["conflict"]
    h_v, h_t = float(tv.entropy[-1]), float(tt.entropy[-1])
    reason = "control" if case.control else drop_reason
    extra = {f"{stem}_{p}": value for p, traj in (("v", tv), ("t", tt)) for stem, value in pass_indices(traj).items()}
    return CaseRow(
        case_id=case.id, group_id=case.group_id, visual_tier=case.visual_tier, text_tier=case.text_tier,
        control=case.control, image_answer=case.image_answer, text_answer=case.text_answer,
        y_v=y_v, y_t=y_t, y_m=y_m, vision_correct=class_v == "vision", text_correct=class_t == "text",
        h_v=h_v, h_t=h_t, dh_rel=float(dh_rel(h_t, h_v)),
        label={"text": "text", "vision": "vision"}.get(class_m, "other"),
        kept=reason is None, drop_reason=reason,
        oscillations=count_switches(tm.classes, has_embedding=True), task=case.task,
        class_v=class_v, class_t=class_t, class_m=class_m,
        p_text_m=float(tm.p_text[-1]), p_vision_m=float(tm.p_vision[-1]),
        logit_diff_m=float(tm.logit_diff[-1]), divergence_position=pair.divergence_position, **extra,
    )


def layer_rows(case_id: str, pass_name: str, trajectory: Trajectory) -> list[LayerRow]:
    """One row per lens layer of one pass's trajectory (`Trajectory.to_rows`, typed)."""
    return [LayerRow(case_id=case_id, pass_name=pass_name, layer_class=row.pop("class"), **row)
            for row in trajectory.to_rows()]
