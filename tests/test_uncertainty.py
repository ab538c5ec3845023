"""interp.uncertainty: values worked out by hand, stability, and the numpy/torch dual path."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from interp.errors import CaseError
from interp.uncertainty import (
    candidate_entropy,
    count_zero_guard,
    dh_rel,
    entropy,
    nmlp_confidence,
    one_minus_max_p,
    top2_margin,
)

LN3 = math.log(3.0)


# --------------------------------------------------------------------------- entropy
def test_entropy_uniform_over_four_is_ln4():
    assert entropy(np.zeros(4)) == pytest.approx(math.log(4.0), abs=1e-12)


def test_entropy_of_two_logits_worked_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]; H = 1/4 ln 4 + 3/4 ln(4/3) = ln 4 - (3/4) ln 3
    expected = math.log(4.0) - 0.75 * LN3
    assert entropy(np.array([0.0, LN3])) == pytest.approx(expected, abs=1e-12)


def test_entropy_batch_shape_and_dim():
    logits = np.zeros((2, 3, 4))
    logits[1, 2] = [0.0, LN3, -np.inf, -np.inf]
    h = entropy(logits)
    assert h.shape == (2, 3)
    assert h[0, 0] == pytest.approx(math.log(4.0))
    assert h[1, 2] == pytest.approx(math.log(4.0) - 0.75 * LN3)
    # the same numbers with the vocabulary on axis 0
    np.testing.assert_allclose(entropy(np.moveaxis(logits, -1, 0), dim=0), h, atol=1e-12)


def test_entropy_huge_logits_are_stable():
    assert entropy(np.array([1e4, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    assert entropy(np.array([1e4, 1e4])) == pytest.approx(math.log(2.0), abs=1e-12)
    assert entropy(np.array([-1e4, -1e4, -1e4])) == pytest.approx(LN3, abs=1e-12)
    # shift invariance where a naive softmax overflows (exp(1000) = inf in float64)
    assert entropy(np.array([0.0, LN3]) + 1000.0) == pytest.approx(entropy(np.array([0.0, LN3])), abs=1e-12)


def test_entropy_masked_tokens_contribute_zero_never_nan():
    h = entropy(np.array([0.0, 0.0, -np.inf, -np.inf]))
    assert h == pytest.approx(math.log(2.0), abs=1e-12)
    assert entropy(np.array([5.0, -np.inf])) == 0.0


def test_entropy_not_a_distribution_gives_nan():
    h = entropy(np.array([[np.nan, 0.0], [-np.inf, -np.inf], [np.inf, 0.0], [0.0, 0.0]]))
    assert np.isnan(h[:3]).all()
    assert h[3] == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_entropy_torch_matches_hand_value_and_returns_tensor(dtype):
    logits = torch.zeros(2, 3, 4, dtype=dtype)
    logits[1, 2] = torch.tensor([0.0, LN3, -math.inf, -math.inf])
    h = entropy(logits)
    assert isinstance(h, torch.Tensor) and h.shape == (2, 3)
    assert h.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6  # ln 3 rounded to 8-11 bits
    assert float(h[0, 0]) == pytest.approx(math.log(4.0), abs=1e-6)
    assert float(h[1, 2]) == pytest.approx(math.log(4.0) - 0.75 * LN3, abs=tol)


def test_torch_and_numpy_agree_on_random_logits():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=5.0, size=(3, 5, 50))
    x[0, 0, :10] = -np.inf
    t = torch.tensor(x, dtype=torch.float64)
    for fn in (entropy, one_minus_max_p, top2_margin, nmlp_confidence):
        np.testing.assert_allclose(fn(t).numpy(), fn(x), rtol=1e-10, atol=1e-12, err_msg=fn.__name__)
    cands = [[1, 2], [30], [40, 41, 42]]
    np.testing.assert_allclose(candidate_entropy(t, cands).numpy(), candidate_entropy(x, cands), atol=1e-12)


def test_torch_huge_and_masked_logits():
    t = torch.tensor([[1e4, 1e4, -math.inf], [1e4, 0.0, -math.inf]], dtype=torch.float16)
    # 1e4 is representable in float16; the upcast keeps the log-softmax finite
    h = entropy(t)
    assert not torch.isnan(h).any()
    assert float(h[0]) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(h[1]) == pytest.approx(0.0, abs=1e-6)


def test_interp_modules_do_not_import_torch_or_model_libraries():
    code = (
        "import sys\n"
        "import interp.uncertainty, interp.following, interp.curves, interp.oscillation, interp.results\n"
        "bad = [m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- other indices
def test_one_minus_max_p_by_hand():
    assert one_minus_max_p(np.zeros(4)) == pytest.approx(0.75)
    assert one_minus_max_p(np.array([0.0, LN3])) == pytest.approx(0.25)
    assert one_minus_max_p(np.array([1e4, 0.0])) == 0.0


def test_top2_margin_by_hand():
    assert top2_margin(np.array([0.0, LN3])) == pytest.approx(0.5)
    # p proportional to [1, 3, 2] -> 3/6 - 2/6
    assert top2_margin(np.log(np.array([1.0, 3.0, 2.0]))) == pytest.approx(1.0 / 6.0)
    assert top2_margin(np.zeros(5)) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        top2_margin(np.zeros(1))


def test_nmlp_on_a_hand_built_distribution():
    # 25 tokens: one at 0.52, twenty-four at 0.02 each. Top 20 = 0.52 and nineteen 0.02.
    p = np.array([0.52] + [0.02] * 24)
    expected = -(math.log(0.52) + 19 * math.log(0.02)) / 20
    assert nmlp_confidence(np.log(p)) == pytest.approx(expected, abs=1e-12)
    # k = 2 on p = [1/4, 3/4]
    assert nmlp_confidence(np.array([0.0, LN3]), k=2) == pytest.approx(
        -(math.log(0.25) + math.log(0.75)) / 2, abs=1e-12
    )


def test_nmlp_higher_means_more_confident():
    vocab = 1000
    uniform = np.zeros(vocab)
    peaked = np.zeros(vocab)
    peaked[0] = 12.0
    assert nmlp_confidence(uniform) == pytest.approx(math.log(vocab))
    assert nmlp_confidence(peaked) > nmlp_confidence(uniform) + 1.0


def test_nmlp_masked_tokens_and_small_vocab():
    # only one unmasked token: the mean runs over it alone -> -log 1 = 0
    assert nmlp_confidence(np.array([0.0, -np.inf, -np.inf])) == 0.0
    # two equal unmasked tokens, k = 20 larger than the vocabulary of 3
    assert nmlp_confidence(np.array([0.0, 0.0, -np.inf])) == pytest.approx(math.log(2.0))
    assert np.isnan(nmlp_confidence(np.array([np.nan, 0.0])))
    with pytest.raises(ValueError):
        nmlp_confidence(np.zeros(3), k=0)


def test_candidate_entropy_restricts_and_renormalises():
    # uniform over 5 tokens; candidates {0,1} and {2} -> P = (2/5, 1/5) -> q = (2/3, 1/3)
    expected = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert candidate_entropy(np.zeros(5), [[0, 1], [2]]) == pytest.approx(expected, abs=1e-12)
    # duplicate ids inside one set count once
    assert candidate_entropy(np.zeros(5), [[0, 1, 1], [2]]) == pytest.approx(expected, abs=1e-12)
    # a candidate with probability 0 contributes 0
    assert candidate_entropy(np.array([0.0, -np.inf, 3.0]), [[0], [1]]) == 0.0
    # every candidate impossible: not a distribution
    assert np.isnan(candidate_entropy(np.array([0.0, -np.inf, -np.inf]), [[1], [2]]))
    # huge logits outside the candidates do not matter
    assert candidate_entropy(np.array([0.0, 0.0, 1e4]), [[0], [1]]) == pytest.approx(math.log(2.0))


def test_candidate_entropy_rejects_bad_sets():
    with pytest.raises(CaseError, match="share"):
        candidate_entropy(np.zeros(5), [[0, 1], [1, 2]])
    with pytest.raises(CaseError, match="nothing"):
        candidate_entropy(np.zeros(5), [[0], []])
    with pytest.raises(CaseError, match="outside"):
        candidate_entropy(np.zeros(5), [[0], [5]])


# --------------------------------------------------------------------------- dh_rel
def test_dh_rel_worked_by_hand():
    assert dh_rel(1.0, 3.0) == pytest.approx(-1.0)  # 2 * (1 - 3) / (1 + 3)
    assert dh_rel(3.0, 1.0) == pytest.approx(1.0)
    assert dh_rel(2.0, 0.0) == pytest.approx(2.0)
    assert dh_rel(0.0, 0.5) == pytest.approx(-2.0)
    assert dh_rel(0.6, 0.2) == pytest.approx(1.0)  # 2 * 0.4 / 0.8
    assert isinstance(dh_rel(1.0, 3.0), float)


def test_dh_rel_zero_guard_and_count():
    h_t = np.array([0.0, 0.0, 1.0, 0.0])
    h_v = np.array([0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(dh_rel(h_t, h_v), [0.0, -2.0, 2.0, 0.0])
    assert count_zero_guard(h_t, h_v) == 2
    assert count_zero_guard(torch.tensor(h_t), torch.tensor(h_v)) == 2


def test_dh_rel_nan_in_nan_out_and_invalid_raise():
    out = dh_rel(np.array([1.0, np.nan, 0.0]), np.array([1.0, 1.0, np.nan]))
    assert out[0] == 0.0 and np.isnan(out[1]) and np.isnan(out[2])
    with pytest.raises(ValueError, match="negative"):
        dh_rel(-0.1, 1.0)
    with pytest.raises(ValueError, match="infinite"):
        dh_rel(np.inf, 1.0)


def test_dh_rel_antisymmetric_and_bounded_on_random_inputs():
    rng = np.random.default_rng(0)
    h_t = rng.exponential(2.0, size=5000)
    h_v = rng.exponential(2.0, size=5000)
    h_t[:50] = 0.0
    h_v[25:75] = 0.0
    d = dh_rel(h_t, h_v)
    np.testing.assert_allclose(dh_rel(h_v, h_t), -d, atol=0)
    assert np.all(np.abs(d) <= 2.0)
    assert d.min() == -2.0 and d.max() == 2.0  # one side exactly zero reaches the bounds


def test_dh_rel_on_tensors():
    out = dh_rel(torch.tensor([1.0, 0.0], dtype=torch.bfloat16), torch.tensor([3.0, 0.0]))
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == pytest.approx([-1.0, 0.0])
