"""The trace finds every family's attention and MLP modules by the names its adapter declares."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hooks.adapters import adapter_for
from hooks.interventions.trace import _sublayer
from hooks.tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoder_layer_has_the_adapters_attention_and_mlp(family):
    model, _ = tiny_model(family)
    adapter = adapter_for(model)
    vlm = SimpleNamespace(layers=adapter.layers(model), adapter=adapter)
    for layer, module in enumerate(vlm.layers):
        attention, mlp = _sublayer(vlm, layer, "attn_out"), _sublayer(vlm, layer, "mlp_out")
        assert attention in (adapter.attention, adapter.cross_attention) and mlp == adapter.mlp
        assert hasattr(module, attention) and hasattr(module, mlp)
