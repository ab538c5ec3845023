"""Position groups resolve through the prompt geometry; bad positions, layers and sites are refused."""

from __future__ import annotations

import pytest

import hooks.interventions as P
from hooks.loading import load_vlm
from hooks.prompts import PromptItem
from hooks.tiny import tiny_model


def test_positions_resolve_through_the_geometry(cases):
    vlm = load_vlm(tiny_model("llava"))
    target = cases.conflict(vlm, [cases.TARGET[0], PromptItem(cases.QUESTION, "It is red .", cases.image(cases.GREEN))])
    g = target.geometry
    assert g[1].n_pad > 0
    assert P.positions(target, "all")[1] == list(range(g[1].n_pad, g[1].length))
    assert P.positions(target, "after:context")[0] == list(range(g[0].context_span[1], g[0].length))
    assert P.positions(target, "answer") == [[g[0].length - 1], [g[1].length - 1]]
    with pytest.raises(P.PatchingError, match="outside the prompt"):
        P.positions(target, [[5], [0]])  # row 1 starts with padding
    with pytest.raises(P.PatchingError, match="unknown position group"):
        P.positions(target, "picture")
    vision = vlm.passes(cases.TARGET, ("vision",))["vision"]
    with pytest.raises(P.PatchingError, match="no 'context'"):
        P.positions(vision, "after:context")
    with pytest.raises(P.PatchingError, match="out of range"):
        P.patch(vlm, target, target, cases.pairs(vlm), layers=vlm.n_layers)
    with pytest.raises(P.PatchingError, match="unknown site"):
        P.patch(vlm, target, target, cases.pairs(vlm), layers=0, site="resid_mid")
