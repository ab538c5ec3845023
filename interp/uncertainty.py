"""Uncertainty of a next-token distribution, and the relative uncertainty dH_rel (METHOD §1.2-1.3, §3.1).

Every per-distribution index takes **logits** (not probabilities) with the vocabulary on axis
``dim`` and reduces that axis away: logits of shape ``(batch, layer, vocab)`` give an index of
shape ``(batch, layer)``. Each accepts either

- a **torch tensor**: computed with torch ops on the tensor's device and returned as a tensor;
  half precision (float16, bfloat16, float8) is upcast to float32 first, float32/float64 are
  kept. torch is imported only when a tensor arrives, so ``interp`` never needs it; or
- anything **numpy** can read (array, list, scalar): computed with numpy/scipy and returned as
  a numpy array (float16 upcast to float32; integers to float64).

Conventions shared by every index:

- **Stable**: everything goes through a log-softmax, so logits of any magnitude (1e4, 1e30)
  are fine.
- **Masked tokens**: a logit of ``-inf`` is a token with probability 0; it contributes 0 to
  every sum (never ``0 * -inf = NaN``).
- **Not a distribution -> NaN**: a NaN or ``+inf`` logit, or a row whose logits are all
  ``-inf``, gives NaN for that row (never a made-up number).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.special

from interp.errors import CaseError

if TYPE_CHECKING:
    import torch
    from jaxtyping import Float

    Logits = Float[np.ndarray, "*batch vocab"] | Float[torch.Tensor, "*batch vocab"]
    Index = Float[np.ndarray, "*batch"] | Float[torch.Tensor, "*batch"]

__all__ = [
    "NMLP_TOP_K",
    "RESPONSE_SUMMARIES",
    "RESPONSE_WINDOW",
    "answer_probability",
    "candidate_entropy",
    "count_zero_guard",
    "dh_rel",
    "entropy",
    "nmlp_confidence",
    "one_minus_max_p",
    "response_confidence",
    "top2_margin",
    "top_logprob_indices",
]

NMLP_TOP_K = 20
"""k of the NMLP token confidence (METHOD §3.1, Du et al.)."""


# --------------------------------------------------------------------------- backends
def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _torch_float(x: torch.Tensor) -> torch.Tensor:
    import torch

    if not torch.is_floating_point(x) or torch.finfo(x.dtype).bits < 32:
        return x.float()
    return x


def _numpy_float(x: Any, dim: int) -> np.ndarray:
    """``x`` as a float array (float16 -> float32, integers -> float64) with ``dim`` moved last."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    elif a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    if a.ndim == 0:
        raise ValueError("logits need a vocabulary axis; got a scalar")
    return np.moveaxis(a, dim, -1)


def _numpy_log_softmax(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return scipy.special.log_softmax(a, axis=-1)


def _numpy_entropy_from_logp(logp: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", under="ignore"):
        terms = np.where(np.isneginf(logp), 0.0, np.exp(logp) * logp)
    return 0.0 - terms.sum(axis=-1)  # 0 - x turns -0.0 into 0.0


def _torch_entropy_from_logp(logp: torch.Tensor, dim: int) -> torch.Tensor:
    import torch

    terms = torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp.exp() * logp)
    return 0.0 - terms.sum(dim=dim)


# --------------------------------------------------------------------------- indices
def entropy(logits: Logits, dim: int = -1) -> Index:
    """Shannon entropy of ``softmax(logits)`` over the full vocabulary, in nats (METHOD §1.2).

    ``H = -sum_y p(y) log p(y)`` with ``log p = log_softmax(logits)``; not normalised, so it
    lies in ``[0, ln V]`` for a vocabulary of ``V`` tokens with finite logits.

    Args:
        logits: the vocabulary on axis ``dim``, e.g. ``(batch, layer, vocab)``; numpy or torch.
        dim: the vocabulary axis.

    Returns:
        The entropy with axis ``dim`` removed, e.g. ``(batch, layer)``; a tensor (float32 or
        float64) for a tensor input, else a numpy array. Masked (``-inf``) tokens contribute 0;
        a NaN/``+inf`` logit or an all-masked row gives NaN.
    """
    if _is_torch(logits):
        import torch

        x = _torch_float(logits)
        return _torch_entropy_from_logp(torch.log_softmax(x, dim=dim), dim)
    return _numpy_entropy_from_logp(_numpy_log_softmax(_numpy_float(logits, dim)))


def one_minus_max_p(logits: Logits, dim: int = -1) -> Index:
    """``1 - max_y p(y)``: 0 for a one-hot distribution, ``1 - 1/V`` for a uniform one.

    Computed as ``-expm1(max log p)`` so that it keeps its precision near 0.
    Shapes, backends and NaN handling as :func:`entropy`.
    """
    if _is_torch(logits):
        import torch

        logp = torch.log_softmax(_torch_float(logits), dim=dim)
        return 0.0 - torch.expm1(logp.amax(dim=dim))
    logp = _numpy_log_softmax(_numpy_float(logits, dim))
    return 0.0 - np.expm1(logp.max(axis=-1))


def top2_margin(logits: Logits, dim: int = -1) -> Index:
    """``p_(1) - p_(2)``: probability of the top token minus that of the runner-up, in [0, 1].

    **[ours]** The margin is taken between the two most probable tokens of the full
    vocabulary and in probability units (not logits), so that it shares the [0, 1] scale of
    :func:`one_minus_max_p`; 1 means certain, 0 a tie. (A margin between the two *candidate
    answers* is ``p(Y_t) - p(Y_v)``, which the logit-lens trajectory records per layer.)
    Needs at least two tokens. Shapes, backends and NaN handling as :func:`entropy`.
    """
    if _is_torch(logits):
        import torch

        x = _torch_float(logits)
        if x.shape[dim] < 2:
            raise ValueError("top2_margin needs a vocabulary of at least 2 tokens")
        top = torch.topk(torch.log_softmax(x, dim=dim), 2, dim=dim).values.exp()
        return top.select(dim, 0) - top.select(dim, 1)
    a = _numpy_float(logits, dim)
    if a.shape[-1] < 2:
        raise ValueError("top2_margin needs a vocabulary of at least 2 tokens")
    logp = _numpy_log_softmax(a)
    v = logp.shape[-1]
    # NaN sorts last in np.partition, so a NaN row yields NaN here as it should.
    top = np.exp(np.partition(logp, v - 2, axis=-1)[..., v - 2 :])
    return top[..., 1] - top[..., 0]


def nmlp_confidence(logits: Logits, k: int = NMLP_TOP_K, dim: int = -1) -> Index:
    """NMLP token confidence ``C = -(1/k) sum_{i=1..k} log p_(i)`` over the top-k log-probs (METHOD §3.1).

    ``p_(1) >= p_(2) >= ...`` are the most probable tokens of the full vocabulary; units are
    nats. **Sign convention**: the formula is kept exactly as written, so **higher = more
    confident**, as in the official code (Du et al.; DeepConf's token confidence). The reason:
    a peaked distribution pushes p_(2), ..., p_(k) towards 0, and their ``-log p`` dominates
    the mean. One secondary summary reads a lower value as more confident; that reading is
    wrong for this formula. Beware that the index is not monotone in uncertainty everywhere:
    a uniform distribution over the whole vocabulary gives ``ln V`` but a uniform one over
    exactly ``k`` tokens gives only ``ln k``.

    **[ours]** Masked tokens (``-inf`` logits) are not candidates for the top k: when fewer
    than ``k`` tokens have non-zero probability the mean runs over those only (a masked token
    would otherwise add ``+inf``). Likewise ``k`` larger than the vocabulary uses the whole
    vocabulary.

    Args:
        logits: the vocabulary on axis ``dim``; numpy or torch.
        k: number of top tokens (default 20, as in the paper).
        dim: the vocabulary axis.

    Returns:
        ``C`` with axis ``dim`` removed (shapes, backends and NaN handling as :func:`entropy`).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if _is_torch(logits):
        import torch

        x = _torch_float(logits)
        top = torch.topk(torch.log_softmax(x, dim=dim), min(int(k), x.shape[dim]), dim=dim).values
        masked = torch.isneginf(top)
        total = torch.where(masked, torch.zeros_like(top), top).sum(dim=dim)
        return (0.0 - total) / (~masked).sum(dim=dim)
    logp = _numpy_log_softmax(_numpy_float(logits, dim))
    v = logp.shape[-1]
    kk = min(int(k), v)
    top = np.partition(logp, v - kk, axis=-1)[..., v - kk :]
    masked = np.isneginf(top)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (0.0 - np.where(masked, 0.0, top).sum(axis=-1)) / (~masked).sum(axis=-1)


def top_logprob_indices(top_logp: Float[np.ndarray, "*batch k"], k: int = NMLP_TOP_K) -> dict[str, np.ndarray]:
    """``1 - max p``, the top-2 margin and NMLP from the highest log-probs alone (numpy).

    ``top_logp[..., i]`` is ``log p_(i+1)``, the (i+1)-th largest log-probability of the full
    vocabulary (``LensResult.top_logits - LensResult.logsumexp``), sorted descending. This is
    what a reduced lens keeps instead of the whole vocabulary; the three indices depend on the
    top tokens only, so with at least ``k`` of them they equal :func:`one_minus_max_p`,
    :func:`top2_margin` and :func:`nmlp_confidence` of the full logits (fewer than ``k``: NMLP
    over those given, as :func:`nmlp_confidence` does for a short vocabulary). ``-inf``
    entries (masked tokens) are left out of NMLP.

    Returns:
        ``{"one_minus_max_p", "top2_margin", "nmlp"}``, each with the last axis removed; the
        margin is NaN when fewer than two log-probs are given.
    """
    a = np.asarray(top_logp, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] < 1:
        raise ValueError("top_logp needs a last axis with at least one log-probability")
    a = -np.sort(-a, axis=-1)  # descending, whatever order the caller kept
    margin = np.exp(a[..., 0]) - np.exp(a[..., 1]) if a.shape[-1] >= 2 else np.full(a.shape[:-1], np.nan)
    top = a[..., : min(int(k), a.shape[-1])]
    masked = np.isneginf(top)
    with np.errstate(invalid="ignore", divide="ignore"):
        nmlp = (0.0 - np.where(masked, 0.0, top).sum(axis=-1)) / (~masked).sum(axis=-1)
    return {"one_minus_max_p": 0.0 - np.expm1(a[..., 0]), "top2_margin": margin, "nmlp": nmlp}


def candidate_entropy(
    logits: Logits, candidate_ids: Sequence[Sequence[int]], dim: int = -1
) -> Index:
    """Entropy over the candidate answers, restricted and renormalised (METHOD §1.2), in nats.

    Candidate answer ``j`` has the token-id set ``S_j`` (its first tokens: spelling variants,
    see ``interp.candidates``). Its probability is ``P_j = sum_{y in S_j} p(y)``; restricted to
    the candidates and renormalised, ``q_j = P_j / sum_i P_i``, and the result is
    ``H = -sum_j q_j log q_j``, in ``[0, ln(number of candidates)]``. Computed stably as the
    entropy of ``L_j = logsumexp(logits[S_j])`` (the softmax normaliser cancels).

    Args:
        logits: the vocabulary on axis ``dim``; numpy or torch.
        candidate_ids: one non-empty collection of token ids per candidate answer, the same
            for every row of ``logits``. Duplicate ids inside one set count once.
        dim: the vocabulary axis.

    Returns:
        ``H`` with axis ``dim`` removed. NaN for a row where every candidate has probability 0
        (all its candidate logits ``-inf``), or a NaN/``+inf`` logit among the candidates.

    Raises:
        CaseError: a candidate has no token ids, an id is outside the vocabulary, or two
            candidates share a token id (then a single token cannot tell them apart: compare
            them at the first position where their tokenisations differ, METHOD §1.5).
    """
    sets = [sorted({int(i) for i in ids}) for ids in candidate_ids]
    if not sets:
        raise CaseError("candidate_entropy needs at least one candidate answer")
    if _is_torch(logits):
        vocab = logits.shape[dim]
    else:
        vocab = np.shape(logits)[dim]
    seen: dict[int, int] = {}
    for j, ids in enumerate(sets):
        if not ids:
            raise CaseError(
                f"candidate {j} has no token ids: its answer tokenises to nothing; fix the answer text"
            )
        for i in ids:
            if not 0 <= i < vocab:
                raise CaseError(
                    f"token id {i} of candidate {j} is outside the vocabulary of {vocab} tokens; "
                    "were the ids made with another tokenizer?"
                )
            if i in seen:
                raise CaseError(
                    f"candidates {seen[i]} and {j} share the first token id {i}; compare them at "
                    "the first position where their tokens differ (interp.candidates)"
                )
            seen[i] = j
    if _is_torch(logits):
        import torch

        x = _torch_float(logits).movedim(dim, -1)
        restricted = torch.stack(
            [
                torch.logsumexp(x[..., torch.tensor(ids, device=x.device)], dim=-1)
                for ids in sets
            ],
            dim=-1,
        )
        return _torch_entropy_from_logp(torch.log_softmax(restricted, dim=-1), -1)
    a = _numpy_float(logits, dim)
    with np.errstate(divide="ignore", invalid="ignore"):
        restricted = np.stack(
            [scipy.special.logsumexp(a[..., ids], axis=-1) for ids in sets], axis=-1
        )
    return _numpy_entropy_from_logp(_numpy_log_softmax(restricted))


# --------------------------------------------------------------------------- relative uncertainty
def _check_entropies(name: str, h: np.ndarray) -> None:
    if np.any(h < 0):
        raise ValueError(f"{name} has negative entries; entropies are >= 0 (pass H in nats)")
    if np.any(np.isinf(h)):
        raise ValueError(f"{name} has infinite entries; an entropy over a finite vocabulary is finite")


def dh_rel(h_t: Any, h_v: Any) -> Any:
    """Relative uncertainty ``dH_rel = 2 (H_t - H_v) / (H_t + H_v)`` (METHOD §1.3), elementwise.

    ``H_t`` is the entropy of the text-only pass, ``H_v`` of the vision-only pass (nats; the
    unit cancels). The result is dimensionless, antisymmetric (swapping the arguments flips
    the sign) and lies in ``[-2, 2]``: negative means the model is more certain from the text.

    **[ours]** Zero guard: where ``H_t + H_v == 0`` (both passes certain) the ratio is 0/0 and
    ``dH_rel`` is defined as 0 (neither modality is the more uncertain); count such cases with
    :func:`count_zero_guard`. NaN in either input gives NaN at that position, never a number.

    Args:
        h_t, h_v: scalars, array-likes or torch tensors; broadcast against each other.

    Returns:
        A Python float for two scalars, a tensor if either input is a tensor, else a numpy
        float64 array.

    Raises:
        ValueError: a negative or infinite entropy (not an entropy of a finite vocabulary).
    """
    if _is_torch(h_t) or _is_torch(h_v):
        import torch

        ref = h_t if _is_torch(h_t) else h_v
        t = _torch_float(torch.as_tensor(h_t, device=ref.device))
        v = _torch_float(torch.as_tensor(h_v, device=ref.device))
        for name, h in (("h_t", t), ("h_v", v)):
            _check_entropies(name, h.detach().cpu().numpy())
        total = t + v
        safe = torch.where(total == 0, torch.ones_like(total), total)
        return torch.where(total == 0, torch.zeros_like(total), 2 * (t - v) / safe)
    t = np.asarray(h_t, dtype=np.float64)
    v = np.asarray(h_v, dtype=np.float64)
    _check_entropies("h_t", t)
    _check_entropies("h_v", v)
    total = t + v
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total == 0, 0.0, 2.0 * (t - v) / np.where(total == 0, 1.0, total))
    if out.ndim == 0:
        return float(out)
    return out


def count_zero_guard(h_t: Any, h_v: Any) -> int:
    """Number of positions where ``H_t + H_v == 0``, i.e. where :func:`dh_rel` applied its zero guard."""
    if _is_torch(h_t):
        h_t = h_t.detach().cpu().numpy()
    if _is_torch(h_v):
        h_v = h_v.detach().cpu().numpy()
    t = np.asarray(h_t, dtype=np.float64)
    v = np.asarray(h_v, dtype=np.float64)
    return int(np.count_nonzero(t + v == 0))


# --------------------------------------------------------------------------- answers and responses
RESPONSE_SUMMARIES = ("mean", "tail", "lowest_window")
"""How per-token confidences become a response's confidence (METHOD §3.1)."""
RESPONSE_WINDOW = 4
"""Tokens of the tail and of the sliding window **[ours]**: Du et al. and DeepConf use windows of
thousands of tokens over reasoning chains; our answers are one to a few words."""


def answer_probability(logits: Any, ids: Sequence[int], dim: int = -1) -> np.ndarray:
    """``P(answer) = sum_{y in ids} p(y)``: the probability of an answer's first-token id set.

    ``ids`` are the answer's first tokens (its spelling variants, ``interp.candidates``);
    computed as ``exp(logsumexp(log p[ids]))``. numpy in, numpy out; NaN handling as
    :func:`entropy`.
    """
    if _is_torch(logits):
        logits = logits.detach().float().cpu().numpy()
    logp = _numpy_log_softmax(_numpy_float(logits, dim))
    chosen = sorted({int(i) for i in ids})
    if not chosen or min(chosen) < 0 or max(chosen) >= logp.shape[-1]:
        raise CaseError(f"answer ids {chosen} are empty or outside the vocabulary of {logp.shape[-1]} tokens")
    with np.errstate(divide="ignore"):
        return np.exp(scipy.special.logsumexp(logp[..., chosen], axis=-1))


def response_confidence(token_confidence: Any, how: str = "mean", window: int = RESPONSE_WINDOW) -> float:
    """A response's confidence from its tokens' confidences (METHOD §3.1), higher = more confident.

    - ``"mean"``: the mean over the generated tokens (Du et al.'s response confidence);
    - ``"tail"``: the mean over the last ``window`` tokens;
    - ``"lowest_window"``: the lowest mean over sliding windows of ``window`` consecutive tokens
      (DeepConf's lowest group confidence: a response is as sure as its least sure stretch).

    A response shorter than ``window`` is one window. The token confidences are any per-token
    index where higher means surer (NMLP, the token's probability); for an index where lower
    means surer (entropy, ``1 - max p``), negate it first.
    """
    c = np.asarray(token_confidence, dtype=np.float64).ravel()
    if c.size == 0:
        raise ValueError("a response needs at least one token")
    if how not in RESPONSE_SUMMARIES:
        raise ValueError(f"unknown response summary {how!r}; choose from {', '.join(RESPONSE_SUMMARIES)}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer; got {window!r}")
    if how == "mean":
        return float(c.mean())
    w = min(int(window), c.size)
    if how == "tail":
        return float(c[-w:].mean())
    sums = np.convolve(c, np.ones(w), mode="valid")
    return float(sums.min() / w)
