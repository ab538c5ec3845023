"""Per-layer logit lens at the answer position, inside one nnsight trace.

For every row, the residual stream at the last position is read after the embedding (the
input of decoder layer 0: image features merged, Gemma's embedding scale applied) and after
every decoder layer, then projected through the model's own final norm and unembedding (and
the soft-cap the class applies) *inside the trace*. Only `(batch, d_model)` slices are taken,
so memory beyond the forward itself does not grow with the sequence length, and the forward
runs with `logits_to_keep=1` where the class accepts it (the model's own logits are computed
for the last position only).

A decoder layer that the forward skips for this input (Mllama's cross-attention layers when
there is no image) passes the residual through unchanged, so its lens repeats the previous one.

Layer index convention: index 0 is the embedding output, index `l` (1..L) the output of
decoder layer `l - 1`; index `L` is the last layer, whose lens equals the model's logits.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.uncertainty import entropy

VLM = Any
"""A `hooks.loading.VLM` (taps sits below loading, which calls it, so the type is not imported)."""

__all__ = ["LensResult", "lens", "project", "accepts_logits_to_keep", "check_required_inputs"]


@dataclass
class LensResult:
    """What one trace returns for a batch (layer axis: embedding + every decoder layer).

    logits: full lens logits when `keep_logits=True`, else None (use the reduced fields).
    entropy: Shannon entropy of the lens distribution, nats, full vocabulary.
    logsumexp: log of the softmax normaliser, so `candidate_logits - logsumexp` are log-probs.
    top_ids / top_logits: the `top_k` highest lens logits per layer (top_ids[..., 0] is top-1).
    candidate_ids / candidate_logits: lens logits of the requested token ids, per layer.
    model_logits: the model's own last-position logits (after any soft-cap).
    """

    entropy: Float[Tensor, "batch layer"]
    logsumexp: Float[Tensor, "batch layer"]
    top_ids: Int[Tensor, "batch layer k"]
    top_logits: Float[Tensor, "batch layer k"]
    model_logits: Float[Tensor, "batch vocab"]
    logits: Float[Tensor, "batch layer vocab"] | None = None
    candidate_ids: Int[Tensor, " n_cand"] | None = None
    candidate_logits: Float[Tensor, "batch layer n_cand"] | None = None

    @property
    def n_layers(self) -> int:
        """Number of lens positions on the layer axis (decoder layers + 1)."""
        return self.entropy.shape[1]

    @property
    def top1(self) -> Int[Tensor, "batch layer"]:
        return self.top_ids[..., 0]

    def candidate_log_probs(self) -> Float[Tensor, "batch layer n_cand"]:
        if self.candidate_logits is None:
            raise ValueError("no candidate ids were requested for this lens")
        return self.candidate_logits - self.logsumexp[..., None]


def project(vlm: VLM, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """`unembed(norm(resid))`, soft-capped as the model caps its own logits."""
    z = vlm.unembedding(vlm.norm(resid))
    cap = vlm.softcap
    return torch.tanh(z / cap) * cap if cap else z


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def check_required_inputs(vlm: VLM, inputs: Mapping[str, Any]) -> None:
    if "pixel_values" not in inputs:
        return
    missing = [k for k in vlm.adapter.required_inputs if k not in inputs]
    if missing:
        raise ValueError(
            f"{vlm.adapter.model_class} needs {', '.join(missing)} with pixel values (without it the model "
            "silently computes other logits); build inputs with hooks.prompts / the model's processor")


def _at(x: Tensor, positions: Tensor | None) -> Tensor:
    """Row b's vector at `positions[b]`, or at the last position of every row when None."""
    if positions is None:
        return x[:, -1, :]
    return x[torch.arange(x.shape[0], device=x.device), positions, :]


def _trace(vlm: VLM, inputs: Mapping[str, Any], keep_logits: bool, cand: Tensor | None, top_k: int,
           positions: Tensor | None = None):
    """The nnsight trace itself; kept a plain function body (nnsight compiles it from source)."""
    kwargs = dict(inputs)
    logit_at = positions
    if accepts_logits_to_keep(vlm.model):
        kwargs["logits_to_keep"] = 1 if positions is None else positions[:, None]  # (batch, 1): one per row
        logit_at = None
    n = vlm.n_layers
    skipped = vlm.adapter.skipped_layers(vlm.model, "pixel_values" in inputs)
    ents, lses, tops, topv, cands, fulls = [], [], [], [], [], []
    with torch.no_grad(), vlm.nn.trace(**kwargs):
        layers = vlm.envoy_layers()
        for i in range(n + 1):
            if i == 0:
                h = _at(layers[0].input, positions)
            elif i - 1 not in skipped:
                h = _at(layers[i - 1].output, positions)
            z = project(vlm, h).float()
            ents.append(entropy(z).save())
            lses.append(torch.logsumexp(z, dim=-1).save())
            best = torch.topk(z, top_k, dim=-1)
            tops.append(best.indices.save())
            topv.append(best.values.save())
            if cand is not None:
                cands.append(z[:, cand].save())
            if keep_logits:
                fulls.append(z.save())
        model_logits = _at(vlm.nn.output.logits, logit_at).float().save()
    return ents, lses, tops, topv, cands, fulls, model_logits


def lens(
    vlm: VLM,
    inputs: Mapping[str, Any],
    *,
    keep_logits: bool = True,
    candidate_ids: Sequence[int] | Tensor | None = None,
    top_k: int = 5,
    positions: Sequence[int] | Tensor | None = None,
) -> LensResult:
    """Run one trace over a left-padded batch and return the lens at the last position.

    `inputs` are the processor's outputs (e.g. `PassBatch.inputs`), already on the model's
    device. With `keep_logits=False` only reduced statistics are kept, so memory is
    O(batch x layers x (top_k + n_candidates)) instead of O(batch x layers x vocab).
    Lens statistics are computed in float32 whatever the model's dtype. `positions` (one per
    row) reads row b at `positions[b]` instead of the last position: the prefix-cache path
    (`hooks.prefix`) runs right-padded suffixes, whose answer positions differ by row.
    """
    check_required_inputs(vlm, inputs)
    vlm.adapter.reset_state(vlm.model)
    cand = None
    if candidate_ids is not None:
        cand = torch.as_tensor(candidate_ids, dtype=torch.long, device=vlm.device).flatten()
    at = None if positions is None else torch.as_tensor(positions, dtype=torch.long, device=vlm.device).flatten()
    ents, lses, tops, topv, cands, fulls, model_logits = _trace(vlm, inputs, keep_logits, cand, top_k, at)
    stack = lambda xs: torch.stack(list(xs), dim=1)  # noqa: E731
    return LensResult(
        entropy=stack(ents),
        logsumexp=stack(lses),
        top_ids=stack(tops),
        top_logits=stack(topv),
        model_logits=model_logits,
        logits=stack(fulls) if keep_logits else None,
        candidate_ids=cand,
        candidate_logits=stack(cands) if cand is not None else None,
    )
