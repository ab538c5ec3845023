"""The per-layer logit lens through TransformerLens' `TransformerBridge`: a second, independent backend.

`tl_lens(vlm, inputs, bridge)` returns what `hooks.taps.lens(...).logits` returns, computed another
way: the bridge (a separate copy of the model, see below) runs `run_with_cache` on the same
left-padded batch, caching only the last position of

- `blocks.0.hook_resid_pre` for layer index 0 (the input of decoder layer 0: image features merged,
  Gemma's embedding scale applied), and
- `blocks.{l-1}.hook_resid_post` for layer index `l` (1..L),

and each residual goes through the bridge's own `ln_final` and `unembed` (the model's final norm and
`lm_head`), then `tanh(z / c) * c` where the VLM's adapter says the class soft-caps its logits. So
the layer axis follows `hooks.taps`: index 0 is the embedding, index `L` equals the model's logits.
`hook_embed` is *not* layer 0: it is the token-embedding output before the image features are
merged in, so it differs from the decoder input at image positions.

Families (all 13 of `hooks.tiny` agree with `hooks.taps` to < 1e-6 on their tiny models).
`bridge_for(vlm, mode=...)`:

- "stock": TransformerLens' own adapter. 4.3 has one for llava, llava_next, llava_onevision,
  qwen2_5_vl, qwen3_vl, gemma3, idefics3 and mistral3; the two Qwen ones need torchvision installed.
  Anything else raises `UnsupportedModelError`.
- "lm_only": a minimal adapter built from our `Adapter`'s paths that bridges only the language
  model (embedding, decoder layers with `hook_resid_pre`/`hook_resid_post` only, final norm,
  `lm_head`); the vision tower runs inside the HF forward, unhooked. It is registered under an
  architecture name of its own, so it never replaces a stock adapter. Works for qwen2_vl,
  paligemma 1 and 2, mllama (mixed self-/cross-attention layers), internvl, and the stock ones.
- "auto" (default): "stock" where it can boot, else "lm_only" with a warning saying why.

A boot that fails raises `UnsupportedModelError` naming the adapter and the paths it used.

Gotchas (TransformerLens 4.3.0, transformers 5.23)
------------------------------------------------
- **Booting mutates the model it is given, in place**: decoder layers and norms become bridge
  wrappers and `config._attn_implementation` becomes "eager" (llava_onevision keeps "sdpa"). The
  VLM's nnsight paths and speed would change, so `bridge_for` boots on a `copy.deepcopy` of the
  model (nnsight's per-module controllers copy as inert) and the VLM is never touched. The copy
  doubles the weights in memory.
- **Eager attention**: the bridge runs the copy with eager attention (so attention-pattern hooks
  fire); on CPU that is most of its extra time. Eager vs SDPA differ by float rounding only.
- **Left padding**: the bridge derives `position_ids` from the attention mask for left-padded rows
  (not for M-RoPE Qwen models, which derive their own); HF's default, which our nnsight path
  uses, is `arange`. RoPE is relative, so both give the same logits up to rounding.
- **Gemma (1 + w) norm**: the bridge's `ln_final` calls the HF norm module itself, so Gemma's
  `x * (1 + w)` in float32 is kept; a hand-written `x * w` RMSNorm would be wrong there.
- **Soft-cap**: the bridge's `unembed` wraps `lm_head` only. Its forward logits come from HF, cap
  included (PaliGemma 2 caps, Gemma3ForConditionalGeneration does not), so the lens adds the cap
  from the VLM's adapter, as `hooks.taps` does.
- **Disk**: boot loads the tokenizer (and tries an `AutoProcessor`) from a directory; the VLM's
  processor is saved to a temporary directory for that, never the weights. The directory is
  removed after boot. TransformerLens would `pip install torchvision` if that processor load
  failed without torchvision; `bridge_for` turns that install off.
- **Stateful models**: Qwen's `rope_deltas` is reset on the bridge's copy before every call, as
  `hooks.taps` does on the VLM.
- **Skipped layers**: a layer the forward does not run for this input (Mllama's cross-attention
  layers without an image) fires no hook; its lens repeats the previous layer's, as in `hooks.taps`.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import warnings
from typing import TYPE_CHECKING, Any, Mapping
from unittest import mock

import torch
from jaxtyping import Float
from torch import Tensor

from hooks.adapters import ADAPTERS, Adapter
from hooks.prompts import PassBatch
from hooks.taps import accepts_logits_to_keep, check_required_inputs
from interp.errors import UnsupportedModelError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from hooks.loading import VLM

__all__ = ["LAYER0_HOOK", "MODES", "bridge_for", "lens_hook_names", "tl_lens", "tl_stock_support"]

#: The hook whose value is what `hooks.taps` calls layer 0 (the input of decoder layer 0).
LAYER0_HOOK = "blocks.0.hook_resid_pre"

_LM_ONLY_PREFIX = "modality_lens.lm_only"
MODES = ("auto", "stock", "lm_only")


def _factory():
    from transformer_lens.factories import architecture_adapter_factory

    return architecture_adapter_factory


def tl_stock_support() -> frozenset[str]:
    """The model classes TransformerLens has its own adapters for (whether or not their optional
    libraries are installed)."""
    return frozenset(a for a in _factory().SUPPORTED_ARCHITECTURES if not a.startswith(_LM_ONLY_PREFIX))


def _missing_libraries(model_class: str) -> list[str]:
    """Optional libraries the stock TransformerLens adapter of `model_class` needs and lacks."""
    stock = _factory().SUPPORTED_ARCHITECTURES[model_class]
    return [lib for lib in getattr(stock, "required_libraries", ()) if importlib.util.find_spec(lib) is None]


def lens_hook_names(n_layers: int) -> list[str]:
    """Hook names whose last-position values are the lens inputs of layers 0..n_layers."""
    return [LAYER0_HOOK] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


def _lm_only_adapter_class(adapter: Adapter) -> type:
    """A TransformerLens adapter that bridges only the text decoder named by our `adapter`.

    Residual hooks only (`BlockBridge` with no submodules), which also works for Mllama's mix of
    self- and cross-attention layers; the vision tower runs inside the HF forward, unhooked.
    """
    from transformer_lens.model_bridge.generalized_components import (
        BlockBridge,
        EmbeddingBridge,
        RMSNormalizationBridge,
        UnembeddingBridge,
    )
    from transformer_lens.model_bridge.supported_architectures.llava import LlavaArchitectureAdapter

    root, unembed = adapter.lm_root, adapter.unembed

    class ResidualBlockBridge(BlockBridge):
        # Without attention/MLP submodules only the residual aliases can resolve; declaring the
        # others would make TransformerLens warn about each, per layer.
        hook_aliases = {"hook_resid_pre": "hook_in", "hook_resid_post": "hook_out"}

    class LanguageModelOnlyAdapter(LlavaArchitectureAdapter):
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            self.component_mapping = {
                "embed": EmbeddingBridge(name=f"{root}.embed_tokens"),
                "blocks": ResidualBlockBridge(name=f"{root}.layers", submodules={}),
                "ln_final": RMSNormalizationBridge(name=f"{root}.norm", config=self.cfg),
                "unembed": UnembeddingBridge(name=unembed, config=self.cfg),
            }

    LanguageModelOnlyAdapter.__qualname__ = LanguageModelOnlyAdapter.__name__ = (
        f"LanguageModelOnlyAdapter[{adapter.model_class}]")
    return LanguageModelOnlyAdapter


def _register_lm_only(adapter: Adapter) -> str:
    """Register the language-model-only adapter under an architecture name of its own (never
    replacing a stock adapter) and return that name."""
    name = f"{_LM_ONLY_PREFIX}[{adapter.model_class}:{adapter.lm_root}:{adapter.unembed}]"
    factory = _factory()
    cls = _lm_only_adapter_class(adapter)
    # Boot checks SUPPORTED_ARCHITECTURES; adapter selection reads the factory's own copy: set both.
    factory.ArchitectureAdapterFactory.register_adapter(name, cls)
    factory.SUPPORTED_ARCHITECTURES[name] = cls
    return name


def _torchvision_importable() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _choose_architecture(vlm: "VLM", mode: str) -> str:
    """The architecture name to boot under: the class's own (stock adapter) or our LM-only one."""
    name = vlm.adapter.model_class
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "lm_only":
        if name not in tl_stock_support():
            why = f"TransformerLens {_tl_version()} has no adapter for {name}"
        elif _missing_libraries(name):
            why = (f"TransformerLens' adapter for {name} needs {', '.join(_missing_libraries(name))}, which is not "
                   "installed")
        else:
            return name
        if mode == "stock":
            listed = "\n  ".join(sorted(tl_stock_support() & _our_classes()))
            raise UnsupportedModelError(
                f"{why}. Of our classes TransformerLens has adapters for:\n  {listed}\n"
                "Use bridge_for(vlm, mode='lm_only') (or 'auto') to bridge only the language model: residual "
                "hooks on the decoder layers, the vision tower unhooked.")
        warnings.warn(f"{why}; bridging only its language model (residual hooks, vision tower unhooked)",
                      stacklevel=3)
    return _register_lm_only(vlm.adapter)


def bridge_for(vlm: "VLM", *, mode: str = "auto") -> "TransformerBridge":
    """Boot a `TransformerBridge` on a deep copy of `vlm.model`; `vlm` itself is left untouched.

    mode: "stock" uses TransformerLens' own adapter for the class and raises
        `UnsupportedModelError` where there is none (or its optional libraries are missing);
        "lm_only" bridges only the language model, with an adapter built from `vlm.adapter`
        (embedding, decoder layers with residual hooks, final norm, unembedding); "auto" (default)
        is "stock" where it can boot and "lm_only" otherwise, with a warning saying why.
    The bridge runs on the VLM's device and dtype. A boot failure raises `UnsupportedModelError`.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers

    name = vlm.adapter.model_class
    if type(vlm.model).__name__ != name:
        raise UnsupportedModelError(f"vlm.model is a {type(vlm.model).__name__} but its adapter is for {name}")
    architecture = _choose_architecture(vlm, mode)

    model = copy.deepcopy(vlm.model)
    model.config.architectures = [architecture]  # boot picks the adapter by it
    with tempfile.TemporaryDirectory(prefix="modality-lens-tl-") as where:
        try:
            vlm.processor.save_pretrained(where)
        except Exception:  # processors of custom classes may not save; the tokenizer is what boot needs
            vlm.tokenizer.save_pretrained(where)
        try:
            with mock.patch.object(helpers, "_ensure_torchvision", _torchvision_importable):
                bridge = TransformerBridge.boot_transformers(where, hf_model=model, device=vlm.device, dtype=vlm.dtype)
        except Exception as err:
            how = "its stock adapter" if architecture == name else "a language-model-only adapter"
            raise UnsupportedModelError(
                f"TransformerLens {_tl_version()} could not boot {name} with {how} "
                f"({type(err).__name__}: {err}). Use hooks.taps.lens for this model, or fix the adapter paths "
                f"(lm_root={vlm.adapter.lm_root!r}, unembed={vlm.adapter.unembed!r}).") from err
    if bridge.cfg.n_layers != vlm.n_layers:
        raise UnsupportedModelError(
            f"the bridge for {name} has {bridge.cfg.n_layers} blocks but the model has {vlm.n_layers} decoder layers")
    return bridge


def _our_classes() -> set[str]:
    return set(ADAPTERS)


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _split_inputs(vlm: "VLM", inputs: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    if isinstance(inputs, PassBatch):
        inputs = inputs.inputs
    check_required_inputs(vlm, inputs)
    rest = dict(inputs)
    return rest.pop("input_ids"), rest


@torch.no_grad()
def tl_lens(vlm: "VLM", inputs: Mapping[str, Any], bridge: "TransformerBridge | None" = None
            ) -> Float[Tensor, "batch layer vocab"]:
    """The logit lens at the last position of every row, through the bridge (float32 logits).

    `inputs` are the processor's outputs for a left-padded batch (a `PassBatch` or its `.inputs`),
    as for `hooks.taps.lens`. Without `bridge` one is booted for this call (slow: pass one from
    `bridge_for(vlm)` when calling more than once). Layer 0 is the embedding, layer `l` the output
    of decoder layer `l - 1`; the last layer equals the model's logits.
    """
    if bridge is None:
        bridge = bridge_for(vlm)
    hf_model = bridge.original_model
    if type(hf_model).__name__ != vlm.adapter.model_class or bridge.cfg.n_layers != vlm.n_layers:
        raise ValueError(f"this bridge wraps a {type(hf_model).__name__} with {bridge.cfg.n_layers} blocks, "
                         f"not this VLM's {vlm.adapter.model_class} with {vlm.n_layers} layers")

    input_ids, rest = _split_inputs(vlm, inputs)
    vlm.adapter.reset_state(hf_model)
    names = lens_hook_names(vlm.n_layers)
    wanted = set(names)
    if accepts_logits_to_keep(hf_model):
        rest["logits_to_keep"] = 1  # as hooks.taps does: the model's own logits at the last position only
    # pos_slice=-1 keeps only the answer position, so the cache does not grow with sequence length.
    _, cache = bridge.run_with_cache(input_ids, names_filter=lambda n: n in wanted, pos_slice=-1, **rest)
    skipped = vlm.adapter.skipped_layers(hf_model, "pixel_values" in rest)
    cap = vlm.adapter.softcap_value(hf_model)
    lenses = []
    for index, hook in enumerate(names):
        if hook in cache:
            resid = cache[hook]
            if resid.dim() == 3:  # TransformerLens 4.3 keeps a length-1 position axis for pos_slice=-1
                resid = resid[:, -1]
        elif index - 1 in skipped:
            pass  # the layer did not run: its output is its input, the previous residual
        else:
            raise RuntimeError(f"the bridge fired no {hook} on this input (cached: {sorted(cache.keys())[:6]}...)")
        z = bridge.unembed(bridge.ln_final(resid)).float()
        lenses.append(torch.tanh(z / cap) * cap if cap else z)
    return torch.stack(lenses, dim=1)
