"""Steering (`steer`, `steering_effect`, `steering_effects`; MC², METHOD §4).

A direction (`hooks.interventions.directions`: the mean difference of the `resid_post` states
at the answer position under a "follow the text" and a "follow the image" instruction) is
added as `alpha x direction[l]` to `resid_post` of every layer `l` in a window, at the answer
position by default **[ours: that is where the direction was measured and where the one-word
answer is read; "all" adds it at every non-padding position instead]**. Added at consecutive
layers, the additions accumulate downstream. `steering_effect` measures what that does to
text-following (TFR and the following curve, against alpha = 0); its report and statistics
are pure and live in `interp.steering`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from hooks.interventions.directions import SteeringDirection, _last_positions
from hooks.interventions.groups import PositionSpec, positions
from hooks.interventions.readouts import InterventionResult, kept_in_both, read_answer, readout
from hooks.interventions.trace import (PatchingError, _index, _layers, _Plan, _tile, _trace, _with_prefix,
                                       _Write)
from hooks.prompts import PassBatch, PromptItem
from interp.candidates import CandidatePair
from interp.curves import fit_following
from interp.following import tfr_vfr
from interp.steering import SteeringReport, SteeringRow
from interp.uncertainty import dh_rel as relative_uncertainty

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["steer", "steering_effect", "steering_effects"]


def _steer_plan(vlm: "VLM", batch: PassBatch, direction: SteeringDirection, alpha: float,
                layers: tuple[int, ...], where: PositionSpec, copies: int = 1,
                alphas: Sequence[float] | None = None) -> _Plan:
    k = direction.positions
    if k > 1 and where != "answer":
        raise PatchingError(f"a direction over the last {k} prompt positions is added at those positions; "
                            f"leave where='answer' (got {where!r}) or build a one-position direction")
    rows_pos = _last_positions(batch, k) if k > 1 else positions(batch, where)
    B = len(batch)
    plan = _Plan()
    scale = list(alphas) if alphas is not None else [alpha]
    for l in layers:
        rows, pos, vals, slot = [], [], [], []
        for c in range(copies):
            for b, ps in enumerate(rows_pos):
                rows += [c * B + b] * len(ps)
                pos += list(ps)
                vals += [scale[c]] * len(ps)
                slot += list(range(len(ps))) if k > 1 else [0] * len(ps)
        tr, tp = _index(rows, pos, vlm.device)
        a = torch.tensor(vals, dtype=torch.float32, device=vlm.device)[:, None]
        vec = direction.vectors[l].float().to(vlm.device)
        vec = vec[torch.tensor(slot, dtype=torch.long, device=vlm.device)] if k > 1 else vec
        plan.write(l, "resid_post", _Write(tr, tp, a * vec, add=True))
    return plan


def steer(
    vlm: "VLM",
    batch: PassBatch,
    pairs: Sequence[CandidatePair],
    direction: SteeringDirection,
    *,
    alpha: float,
    layers: Iterable[int] | int | None = None,
    where: PositionSpec = "answer",
    keep_logits: bool = False,
) -> InterventionResult:
    """Add `alpha * direction.vectors[l]` to `resid_post` of each layer l in `layers` (None: all)
    at the positions `where` ("answer" by default, "all", a group or explicit lists). A
    direction over the last K prompt positions adds its k-th vector at each row's k-th last
    position (`where` must stay "answer")."""
    batch = _with_prefix(batch, pairs)
    plan = _steer_plan(vlm, batch, direction, alpha, _layers(vlm, layers, batch), where)
    clean, _ = _trace(vlm, batch.inputs, _Plan())
    steered, _ = _trace(vlm, batch.inputs, plan)
    return InterventionResult(readout(clean, pairs, keep_logits), readout(steered, pairs, keep_logits))


def steering_effect(
    vlm: "VLM",
    items: Sequence[PromptItem],
    pairs: Sequence[CandidatePair],
    direction: SteeringDirection,
    *,
    alphas: Sequence[float] = (-4.0, 4.0),
    layers: Iterable[int] | int | None = None,
    where: PositionSpec = "answer",
    correct_only: bool = True,
    n_boot: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> SteeringReport:
    """TFR and balance point of the conflict pass steered with each alpha, against alpha = 0.

    Per case: the unsteered vision-only and text-only passes give the unimodal answers and
    entropies (dH_rel, METHOD §1.3); the conflict pass is run once per alpha (tiled in one
    forward) and its top-1 answer token is labelled text / vision / other with the case's
    pair. With `correct_only`, only cases whose unimodal answers are right in both passes
    enter TFR and the curve (METHOD §1.1). Alpha 0 is always run. `batch_size`: items per
    forward (each tiled once per alpha); None: all at once.
    """
    return steering_effects(vlm, items, pairs, direction, alphas=alphas, windows=[layers], where=where,
                            correct_only=correct_only, n_boot=n_boot, seed=seed, batch_size=batch_size)[0]


def steering_effects(
    vlm: "VLM",
    items: Sequence[PromptItem],
    pairs: Sequence[CandidatePair],
    direction: SteeringDirection,
    *,
    alphas: Sequence[float] = (-4.0, 4.0),
    windows: Sequence[Iterable[int] | int | None] = (None,),
    where: PositionSpec = "answer",
    correct_only: bool = True,
    n_boot: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[SteeringReport]:
    """`steering_effect` for several layer windows at once (one report per window, in order):
    the unsteered unimodal passes are run once and shared."""
    if len(items) != len(pairs):
        raise PatchingError(f"need one candidate pair per item: {len(pairs)} != {len(items)}")
    if batch_size is not None and batch_size < 1:
        raise PatchingError(f"batch_size must be a positive number of items, got {batch_size}")
    run_alphas = [0.0] + [float(a) for a in alphas if float(a) != 0.0]
    n, step = len(items), batch_size or max(1, len(items))
    chunks = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    kept: list[bool] = []
    uni_entropy: dict[str, list[np.ndarray]] = {"vision": [], "text": []}
    conflicts = []
    for lo, hi in chunks:
        batches = vlm.passes(items[lo:hi], ("vision", "text", "conflict"))
        uni = {name: read_answer(vlm, batches[name], pairs[lo:hi]) for name in ("vision", "text")}
        for name, r in uni.items():
            uni_entropy[name].append(r.entropy.cpu().numpy())
        kept += kept_in_both(uni["vision"], uni["text"], pairs[lo:hi]) if correct_only else [True] * (hi - lo)
        conflicts.append(_with_prefix(batches["conflict"], pairs[lo:hi]))
    dh = np.asarray(relative_uncertainty(np.concatenate(uni_entropy["text"]), np.concatenate(uni_entropy["vision"])),
                    dtype=np.float64)
    kept_mask = torch.tensor(kept, dtype=torch.bool)
    used = [i for i in range(n) if kept[i]]
    reports = []
    for layers in windows:
        chosen = _layers(vlm, layers, conflicts[0])
        labels: list[list[Any]] = [[] for _ in run_alphas]
        diffs: list[list[Tensor]] = [[] for _ in run_alphas]
        for (lo, hi), conflict in zip(chunks, conflicts):
            plan = _steer_plan(vlm, conflict, direction, 0.0, chosen, where, copies=len(run_alphas),
                               alphas=run_alphas)
            z, _ = _trace(vlm, _tile(conflict.inputs, len(run_alphas)), plan)
            steered = readout(z, pairs[lo:hi])
            flat, m = steered.labels(pairs[lo:hi]), hi - lo
            for c in range(len(run_alphas)):
                labels[c] += flat[c * m:(c + 1) * m]
                diffs[c].append(steered.logit_diff[c * m:(c + 1) * m].cpu())
        rows = []
        for c, alpha in enumerate(run_alphas):
            ratios = tfr_vfr(labels[c][i] for i in used)
            follow = [i for i in used if labels[c][i] in ("text", "vision")]
            curve = fit_following(dh[follow], np.array([labels[c][i] == "text" for i in follow], dtype=bool),
                                  n_boot=n_boot, seed=seed)
            kept_diffs = torch.cat(diffs[c])[kept_mask]
            mean_diff = float(kept_diffs.mean()) if len(kept_diffs) else float("nan")
            rows.append(SteeringRow(alpha, tuple(labels[c]), ratios, curve, mean_diff))
        rows.sort(key=lambda r: r.alpha)
        reports.append(SteeringReport(chosen, where if isinstance(where, str) else "explicit", n, tuple(kept),
                                      tuple(float(x) for x in dh), tuple(rows)))
    return reports
