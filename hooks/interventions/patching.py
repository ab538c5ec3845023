"""Activation patching (`patch`, `patching_sweep`).

Values of a site in a *source* batch are written into a *target* batch, row b of the source
into row b of the target. When the two layouts differ, a named group maps by order within the
group (the k-th image token to the k-th image token) **[ours]**; groups of different sizes are
refused (`PatchingError`) unless an explicit `PositionMap` says what goes where
(`hooks.interventions.groups`). A sweep tiles the target batch once per (group, layer)
configuration, so a whole sweep costs a few forwards. The heatmap of a sweep is
`modality_lens.plots.plot_patching`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from hooks.interventions.groups import GROUPS, PositionMap, map_positions
from hooks.interventions.readouts import AnswerReadout, InterventionResult, readout
from hooks.interventions.trace import (PatchingError, _index, _layers, _Plan, _site, _tile, _trace, _with_prefix,
                                       _Write)
from hooks.prompts import PassBatch
from interp.candidates import CandidatePair

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["PatchingSweep", "patch", "patching_sweep"]


def _patch_write(mapping: PositionMap, values: Tensor, row_offset: int, device: torch.device) -> _Write:
    """The write that copies `values[b, source[b][k]]` to `(row_offset + b, target[b][k])`."""
    src_rows, src_pos, tgt_rows, tgt_pos = [], [], [], []
    for b, (s, t) in enumerate(zip(mapping.source, mapping.target)):
        src_rows += [b] * len(s)
        src_pos += list(s)
        tgt_rows += [row_offset + b] * len(t)
        tgt_pos += list(t)
    sr, sp = _index(src_rows, src_pos, values.device)
    tr, tp = _index(tgt_rows, tgt_pos, device)
    return _Write(tr, tp, values[sr, sp].to(device))


def patch(
    vlm: "VLM",
    source: PassBatch,
    target: PassBatch,
    pairs: Sequence[CandidatePair],
    *,
    layers: int | Iterable[int],
    group: str | PositionMap = "all",
    site: str = "resid_post",
    keep_logits: bool = False,
) -> InterventionResult:
    """Copy `site` at `layers` and `group`'s positions from `source` into `target`, row by row.

    Args:
        source, target: batches with one row per case (e.g. `vlm.passes(...)`); row b of the
            source is patched into row b of the target.
        pairs: one candidate pair per row, read at the target's answer position.
        layers: decoder layer(s); several layers are patched in the same forward.
        group: a named group (mapped by order, sizes must agree), "all", "after:<group>", or a
            `PositionMap`.
        site: "resid_pre", "resid_post" (default), "attn_out" or "mlp_out".

    Returns:
        `InterventionResult` with the clean target, the patched target and the source readouts.
    """
    site = _site(site)
    source, target = _with_prefix(source, pairs), _with_prefix(target, pairs)
    mapping = map_positions(source, target, group)
    chosen = _layers(vlm, layers)
    src_logits, saved = _trace(vlm, source.inputs, _Plan(saves={(l, site) for l in chosen}))
    clean_logits, _ = _trace(vlm, target.inputs, _Plan())
    plan = _Plan()
    for l in chosen:
        plan.write(l, site, _patch_write(mapping, saved[(l, site)], 0, vlm.device))
    logits, _ = _trace(vlm, target.inputs, plan)
    return InterventionResult(readout(clean_logits, pairs, keep_logits), readout(logits, pairs, keep_logits),
                              readout(src_logits, pairs, keep_logits))


@dataclass
class PatchingSweep:
    """A layer x position-group patching sweep (`patched` has rows batch x group x layer)."""

    site: str
    groups: tuple[str, ...]
    layers: tuple[int, ...]
    clean: AnswerReadout
    source: AnswerReadout
    patched: AnswerReadout
    group_sizes: Int[Tensor, "batch group"]

    @property
    def effect(self) -> Float[Tensor, "batch group layer"]:
        """Change of logit(text) - logit(vision) at the answer position, per case."""
        return self.patched.logit_diff - self.clean.logit_diff[:, None, None]

    @property
    def recovered(self) -> Float[Tensor, "batch group layer"]:
        """effect / (source - clean): 1 where the patch moves the target all the way to the source."""
        gap = (self.source.logit_diff - self.clean.logit_diff)[:, None, None]
        return self.effect / gap

    def mean(self, value: str = "effect") -> Float[Tensor, "group layer"]:
        """Over cases: the mean "effect" or "logit_diff", or "recovered" as mean effect / mean gap.

        **[ours]** The aggregate share of the gap is a ratio of means: per-case ratios explode
        for cases whose source and target barely differ.
        """
        if value == "recovered":
            gap = (self.source.logit_diff - self.clean.logit_diff).mean()
            return self.effect.mean(0) / gap
        if value not in ("effect", "logit_diff"):
            raise ValueError(f"unknown value {value!r}; choose effect, recovered or logit_diff")
        return (self.effect if value == "effect" else self.patched.logit_diff).mean(0)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists for JSON: per-case arrays are batch x group x layer."""
        t = lambda x: x.detach().cpu().tolist()  # noqa: E731
        return {
            "site": self.site, "groups": list(self.groups), "layers": list(self.layers),
            "layer_convention": f"decoder layer index; site {self.site}",
            "mean_effect": t(self.mean("effect")), "mean_recovered": t(self.mean("recovered")),
            "effect": t(self.effect), "patched_logit_diff": t(self.patched.logit_diff),
            "clean_logit_diff": t(self.clean.logit_diff), "source_logit_diff": t(self.source.logit_diff),
            "patched_log_p_text": t(self.patched.log_p_text), "patched_log_p_vision": t(self.patched.log_p_vision),
            "group_sizes": t(self.group_sizes),
        }


def patching_sweep(
    vlm: "VLM",
    source: PassBatch,
    target: PassBatch,
    pairs: Sequence[CandidatePair],
    *,
    groups: Sequence[str | PositionMap] = GROUPS,
    layers: Iterable[int] | None = None,
    site: str = "resid_post",
    max_rows: int = 256,
    progress: bool = False,
) -> PatchingSweep:
    """Patch each group at each layer separately (one configuration at a time) and read the answer.

    The target batch is tiled so that one forward holds up to `max_rows` rows (whole copies
    of the batch, one per configuration); the source is run once. `layers=None`: every
    decoder layer that runs for both batches. A group must map in every row (see
    `map_positions`); an empty group (e.g. "image" in two text-only passes) leaves the target
    unchanged.
    """

    site = _site(site)
    source, target = _with_prefix(source, pairs), _with_prefix(target, pairs)
    maps = [map_positions(source, target, g) for g in groups]
    chosen = _layers(vlm, layers, source, target)
    if not chosen:
        raise PatchingError("no layer to sweep")
    src_logits, saved = _trace(vlm, source.inputs, _Plan(saves={(l, site) for l in chosen}))
    clean_logits, _ = _trace(vlm, target.inputs, _Plan())
    B = len(target)
    configs = [(g, l) for g in range(len(maps)) for l in chosen]
    per_forward = max(1, max_rows // B)
    chunks = [configs[i:i + per_forward] for i in range(0, len(configs), per_forward)]
    logits = []
    for chunk in tqdm(chunks, desc=f"patching {site}", unit="forward", disable=not progress):
        plan = _Plan()
        for c, (g, l) in enumerate(chunk):
            plan.write(l, site, _patch_write(maps[g], saved[(l, site)], c * B, vlm.device))
        z, _ = _trace(vlm, _tile(target.inputs, len(chunk)), plan)
        logits.append(z.reshape(len(chunk), B, -1))
    stacked = torch.cat(logits, 0).reshape(len(maps), len(chosen), B, -1).permute(2, 0, 1, 3)
    patched = readout(stacked.reshape(B * len(maps) * len(chosen), -1),
                      _repeat_pairs(pairs, len(maps) * len(chosen))).reshape(B, len(maps), len(chosen))
    sizes = torch.tensor([[len(m.target[b]) for m in maps] for b in range(B)])
    names = tuple(m.name for m in maps)
    return PatchingSweep(site, names, chosen, readout(clean_logits, pairs), readout(src_logits, pairs), patched, sizes)


def _repeat_pairs(pairs: Sequence[CandidatePair], k: int) -> list[CandidatePair]:
    """Each pair k times in a row (rows ordered batch-major, as after the sweep's permute)."""
    out: list[CandidatePair] = []
    for p in pairs:
        out.extend([p] * k)
    return out
