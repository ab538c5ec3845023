"""Direct logit attribution (`direct_logit_attribution`): what each head and MLP writes towards the
text answer, at the answer position.

The residual stream at the answer position after the last decoder layer is a sum:
`r = e + sum_l (A_l + M_l)`, `e` the input of decoder layer 0 (the embedding, image
features merged, Gemma's scale applied), `A_l` what layer l's attention adds, `M_l` what its
MLP adds. Attention splits further over heads: `A_l = sum_h W_O[:, h] z_h + b_O` (the
adapter's `out_proj`; `b_O` is zero for every class here and kept as its own term).

Convention (the one TransformerLens' `apply_ln_to_stack` / `logit_attrs` use): **the final
norm's scale is frozen** at its value on the full residual `r`. For an RMSNorm
`norm(x) = g * x / sqrt(mean(x^2) + eps)`, the frozen map is the linear
`N_r(c) = g * c / sqrt(mean(r^2) + eps)`, so `N_r(r) = norm(r)` and `N_r` is additive over the
terms. Each term's attribution is `N_r(term) . u`, `u = W_U[t] - W_U[v]`, so that

    attribution(e) + sum_{l,h} attribution(head l.h) + sum_l attribution(b_O of l)
        + sum_l attribution(MLP l) + (b_U[t] - b_U[v]) = z[t] - z[v]

exactly (to float rounding): the model's own logit difference of tokens t and v at the
answer position. Sandwich-norm layers (Gemma 2 / 3, the adapter's `output_norms`) normalise
a sublayer's output before the residual add; their scale is frozen the same way (at the
sublayer's full output), so heads still sum to `A_l`.

**[ours]** Choices the method leaves open:
- t and v are single tokens: per case, the candidate id of each answer with the highest logit
  at the answer position of the unintervened pass (the id that dominates the log-sum-exp
  `AnswerReadout.logit_diff`; for one-id answers the two are the same number).
- A class that soft-caps its logits (PaliGemma 2): the attributions sum to the *pre-cap*
  logit difference, since `tanh` is not additive.
- The attribution is read at the answer position only; all quantities in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooks.adapters import get_module
from hooks.interventions.heads import _out_proj, head_shape
from hooks.interventions.readouts import AnswerReadout, readout
from hooks.interventions.trace import _sublayer, _with_prefix
from hooks.prompts import PassBatch
from hooks.taps import accepts_logits_to_keep, check_required_inputs
from interp.candidates import CandidatePair
from interp.errors import UnsupportedModelError

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["LogitAttribution", "direct_logit_attribution", "frozen_norm_scale"]

def _tolerance(dtype: torch.dtype) -> float:
    """Relative bound on |e + sum(A_l + M_l) - r| / |r| (and on a norm's frozen-scale check) before
    the decomposition is refused: 1e-3 in float32, a few rounding steps of a half-precision model."""
    return max(1e-3, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


@dataclass
class LogitAttribution:
    """Per case: the direct effect of every component on `z[text_id] - z[vision_id]`.

    `heads[b, l, h]`: head h of decoder layer l; `attn_bias[b, l]`: layer l's `o_proj` bias;
    `mlp[b, l]`; `embed[b]`: the input of layer 0; `unembed_bias[b]`: `b_U[t] - b_U[v]`.
    `logit_diff`: the model's own (pre-cap) logit difference of the two tokens, which `total`
    reproduces. `clean`: the pass's `AnswerReadout`.
    """

    heads: Float[Tensor, "batch layer head"]
    attn_bias: Float[Tensor, "batch layer"]
    mlp: Float[Tensor, "batch layer"]
    embed: Float[Tensor, " batch"]
    unembed_bias: Float[Tensor, " batch"]
    logit_diff: Float[Tensor, " batch"]
    text_ids: Int[Tensor, " batch"]
    vision_ids: Int[Tensor, " batch"]
    clean: AnswerReadout

    @property
    def total(self) -> Float[Tensor, " batch"]:
        """The sum of every term: equals `logit_diff`."""
        return (self.embed + self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlp.sum(1)
                + self.unembed_bias)

    @property
    def attention(self) -> Float[Tensor, "batch layer"]:
        """Per layer, all heads and the bias: the attention sublayer's direct effect."""
        return self.heads.sum(2) + self.attn_bias

    def to_dict(self) -> dict[str, Any]:
        t = lambda x: x.detach().cpu().tolist()  # noqa: E731
        return {"convention": "final-norm scale frozen at the full residual; pre-cap logit(text id) - logit(vision "
                              "id) at the answer position", "heads": t(self.heads), "mlp": t(self.mlp),
                "attn_bias": t(self.attn_bias), "embed": t(self.embed), "unembed_bias": t(self.unembed_bias),
                "logit_diff": t(self.logit_diff), "text_ids": t(self.text_ids), "vision_ids": t(self.vision_ids)}


def frozen_norm_scale(norm: Any, x: Float[Tensor, "rows d"]) -> Float[Tensor, "rows d"]:
    """`s` with `norm(x) = s * x` for an RMSNorm module at `x`, so `c -> s * c` is the norm with its
    scale frozen at `x`. The gain is read through the module itself (`norm(1) * sqrt(1 + eps)`),
    which keeps Gemma's `(1 + w)` and float32 upcast; a norm that is not an RMSNorm is refused."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise UnsupportedModelError(f"{type(norm).__name__} has no variance_epsilon / eps; direct logit attribution "
                                    "needs an RMSNorm")
    x = x.float()
    ones = torch.ones(1, x.shape[-1], dtype=norm.weight.dtype if hasattr(norm, "weight") else x.dtype,
                      device=x.device)
    with torch.no_grad():
        gain = norm(ones).float()[0] * (1.0 + float(eps)) ** 0.5
        want = norm(x.to(ones.dtype)).float()
    scale = gain / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + float(eps))
    err = (scale * x - want).abs().max().item()
    if err > _tolerance(ones.dtype) * max(1.0, want.abs().max().item()):
        raise UnsupportedModelError(f"{type(norm).__name__} is not an RMSNorm x * g / rms(x) (off by {err:.3g}); "
                                    "its scale cannot be frozen this way")
    return scale


def _sandwich(vlm: "VLM", layer: int) -> tuple[Any, Any] | None:
    names = vlm.adapter.output_norms
    block = vlm.layers[layer]
    if names is None or not hasattr(block, names[1]):
        return None
    return getattr(block, names[0]), getattr(block, names[1])


def _dla_trace(vlm: "VLM", inputs: dict[str, Any]):
    """Saves, at the last position: layer 0's input, each layer's z / attention output / MLP
    output, the last layer's output, and the logits. A plain function body (nnsight)."""
    kwargs = dict(inputs)
    if accepts_logits_to_keep(vlm.model):
        kwargs["logits_to_keep"] = 1
    n = vlm.n_layers
    skipped = vlm.adapter.skipped_layers(vlm.model, "pixel_values" in inputs)
    ran = [l for l in range(n) if l not in skipped]
    z_paths = {l: _out_proj(vlm, l) for l in ran}
    attn = {l: _sublayer(vlm, l, "attn_out") for l in ran}
    mlp = {l: _sublayer(vlm, l, "mlp_out") for l in ran}
    check_required_inputs(vlm, inputs)
    vlm.adapter.reset_state(vlm.model)
    zs, attn_out, mlp_out, ends = {}, {}, {}, []
    with torch.no_grad(), vlm.nn.trace(**kwargs):
        layers = vlm.envoy_layers()
        ends.append(layers[0].input[:, -1].float().save())
        for l in ran:
            layer = layers[l]
            zs[l] = get_module(layer, z_paths[l]).input[:, -1].float().save()
            attn_out[l] = getattr(layer, attn[l]).output[0][:, -1].float().save()
            mlp_out[l] = getattr(layer, mlp[l]).output[:, -1].float().save()
        ends.append(layers[n - 1].output[:, -1].float().save())
        ends.append(vlm.nn.output.logits[:, -1, :].float().save())
    return ends, zs, attn_out, mlp_out, ran


def _head_outputs(vlm: "VLM", layer: int, z: Tensor) -> tuple[Tensor, Tensor]:
    """(batch, head, d) outputs `W_O[:, h] z_h` of every head, and the projection's bias (d,)."""
    n_heads, _, width = head_shape(vlm)
    proj = get_module(vlm.layers[layer], _out_proj(vlm, layer))
    w = proj.weight.float()  # (d, n_heads * width)
    per_head = torch.einsum("bhk,dhk->bhd", z.reshape(z.shape[0], n_heads, width),
                            w.reshape(w.shape[0], n_heads, width))
    bias = proj.bias.float() if getattr(proj, "bias", None) is not None else torch.zeros(w.shape[0], device=w.device)
    return per_head, bias


def _pick_ids(logits: Tensor, pairs: Sequence[CandidatePair]) -> tuple[Tensor, Tensor]:
    def best(ids: frozenset[int] | set[int], b: int) -> int:
        ids = sorted(ids)
        return ids[int(logits[b, ids].argmax())]

    t = [best(p.text_ids, b) for b, p in enumerate(pairs)]
    v = [best(p.vision_ids, b) for b, p in enumerate(pairs)]
    dev = logits.device
    return torch.tensor(t, device=dev), torch.tensor(v, device=dev)


@torch.no_grad()
def direct_logit_attribution(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair]) -> LogitAttribution:
    """Every head's, MLP's and the embedding's direct effect on `z[t] - z[v]` at the answer position
    (see the module docstring for the frozen-scale convention and the choice of t, v).

    Raises `UnsupportedModelError` when the terms do not rebuild the final residual (a layer that
    adds more than `attention + MLP`, e.g. Mllama's gated cross-attention layers).
    """
    batch = _with_prefix(batch, pairs)
    if vlm.adapter.cross_attention:
        raise UnsupportedModelError(f"{vlm.adapter.family}'s gated cross-attention layers add tanh(gate) x their "
                                    "output; direct logit attribution covers plain pre-norm decoder layers only")
    (embed, final, logits), zs, attn_out, mlp_out, ran = _dla_trace(vlm, batch.inputs)
    B, n_heads = len(batch), head_shape(vlm)[0]
    dev = final.device
    heads = torch.zeros(B, vlm.n_layers, n_heads, device=dev)
    bias_t, mlp_t = torch.zeros(B, vlm.n_layers, device=dev), torch.zeros(B, vlm.n_layers, device=dev)
    text_ids, vision_ids = _pick_ids(logits, pairs)
    unembed = vlm.unembedding
    w_u = unembed.weight.float()
    u = w_u[text_ids] - w_u[vision_ids]  # (batch, d)
    s_final = frozen_norm_scale(vlm.norm, final)

    def project(c: Tensor) -> Tensor:  # (batch, d) or (batch, head, d) -> the frozen-norm logit difference
        return (c * (s_final * u).unsqueeze(-2)).sum(-1) if c.dim() == 3 else (c * s_final * u).sum(-1)

    rebuilt = embed.clone()
    for l in ran:
        per_head, bias = _head_outputs(vlm, l, zs[l])
        attn_total, mlp_total = per_head.sum(1) + bias, mlp_out[l]
        norms = _sandwich(vlm, l)
        if norms is not None:
            s_attn, s_mlp = frozen_norm_scale(norms[0], attn_out[l]), frozen_norm_scale(norms[1], mlp_out[l])
            per_head, bias = per_head * s_attn.unsqueeze(1), bias * s_attn
            attn_total, mlp_total = attn_total * s_attn, mlp_total * s_mlp
        elif (attn_total - attn_out[l]).abs().max() > _tolerance(vlm.dtype) * (1 + attn_out[l].abs().max()):
            raise UnsupportedModelError(f"layer {l}: the heads' outputs do not sum to the attention output; check the "
                                        f"adapter's out_proj ({vlm.adapter.out_proj!r}) and head names")
        heads[:, l], mlp_t[:, l] = project(per_head), project(mlp_total)
        bias_t[:, l] = project(bias.expand_as(attn_total))
        rebuilt = rebuilt + attn_total + mlp_total
    off = (rebuilt - final).norm(dim=-1) / final.norm(dim=-1).clamp_min(1e-12)
    if off.max().item() > _tolerance(vlm.dtype):
        raise UnsupportedModelError(
            f"{vlm.adapter.family}: embedding + attention + MLP outputs rebuild the final residual only to "
            f"{off.max().item():.2g} (relative); the decoder layer adds something else. Check the adapter's "
            "output_norms / attention / mlp names")
    b_u = getattr(unembed, "bias", None)
    unembed_bias = (b_u.float()[text_ids] - b_u.float()[vision_ids]) if b_u is not None else torch.zeros(B, device=dev)
    pre_cap = (unembed(vlm.norm(final.to(vlm.dtype))).float() if vlm.softcap else logits)
    rows = torch.arange(B, device=dev)
    diff = pre_cap[rows, text_ids] - pre_cap[rows, vision_ids]
    return LogitAttribution(heads, bias_t, mlp_t, project(embed), unembed_bias, diff, text_ids, vision_ids,
                            readout(logits, pairs))
