"""Declarative adapters: where each Hugging Face VLM class keeps what the logit lens needs.

An `Adapter` is data, not code: the dotted paths of the decoder layers, final norm,
unembedding and token embedding, the names of a decoder layer's attention and MLP modules
(the interventions' sites), whether the class soft-caps its final logits, and the extra inputs
its forward needs. The lens of layer `l` is `unembed(norm(resid_l))`, capped with
`tanh(z / c) * c` when `softcap` is set, and for the last layer it must equal the model's own
logits (checked at load time by `hooks.loading.load_vlm`).

Adding an architecture
----------------------
1. Build the model (a tiny config is enough) and find the text decoder: the module whose
   `.layers` is the `nn.ModuleList` of decoder blocks, and its final `.norm`.
2. Check whether the class's forward applies `final_logit_softcapping`: scale `lm_head`'s
   weights so the logits exceed the cap and compare `lm_head(norm(h))` with the model's logits.
3. Note inputs the forward silently needs (e.g. Qwen's `mm_token_type_ids`).
   Note a decoder layer's attention and MLP module names when they are not `self_attn` / `mlp`,
   and, for the head-level tools (`hooks.interventions.heads`), the attention output projection
   (`out_proj`), the head-count config names and any post-sublayer ("sandwich") norms
   (`output_norms`); `direct_logit_attribution` refuses a model whose terms do not rebuild its
   final residual, which catches a wrong entry.
4. `register_adapter(Adapter("MyVLMForConditionalGeneration", ...))`, or pass
   `adapter=` to `load_vlm`; then add the family to `hooks.tiny` and the test matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from interp.errors import UnsupportedModelError

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "register_adapter", "supported_classes", "get_module"]


def get_module(root: Any, path: str) -> Any:
    """Follow a dotted attribute path (`"model.language_model.norm"`) from `root`."""
    try:
        return reduce(getattr, path.split("."), root)
    except AttributeError as err:
        raise UnsupportedModelError(
            f"{type(root).__name__} has no module at {path!r} ({err}); the adapter's paths do not match this "
            "model. Pass a corrected Adapter to load_vlm(adapter=...)."
        ) from None


@dataclass(frozen=True)
class Adapter:
    """Where a VLM class keeps its language model, and what its lens must reproduce.

    model_class: the transformers class name, e.g. "LlavaForConditionalGeneration".
    lm_root: dotted path of the text decoder (has `.layers`, `.norm`, `.embed_tokens`).
    unembed: dotted path of the unembedding (`lm_head` for every class here).
    softcap: True when the class's forward applies the text config's
        `final_logit_softcapping` to its logits (PaliGemma with a Gemma-2 text model does;
        Gemma3ForConditionalGeneration in transformers 5 does not, even when the config sets it).
    required_inputs: processor outputs the forward needs whenever pixels are passed; missing
        ones are refused rather than silently giving other logits (Qwen2.5-VL falls back to
        1-D positions without `mm_token_type_ids`).
    stateful: dotted attributes the model caches across calls, reset to None before a trace
        (Qwen's `rope_deltas`).
    image_only_layers: text-config attribute listing decoder layers that run only when an
        image is given (Mllama's `cross_attention_layers`).
    text_only_format: how to build a text-only prompt when the processor refuses text without
        images (PaliGemma): a format string over `{bos}` and `{text}`, tokenised directly.
    attention: attribute name of a decoder layer's attention module, relative to the layer
        (the `attn_out` site of `hooks.interventions` is its output[0]).
    cross_attention: the attention module's name in decoder layers that have no `attention`
        one (Mllama's cross-attention layers: `cross_attn`); None when every layer has it.
    mlp: attribute name of a decoder layer's MLP module, relative to the layer (`mlp_out`).
    prefix_cache: the class can reuse the KV cache of a prompt's prefix (everything before the
        context / question) exactly: a causal language model whose image features all lie in
        the prefix, with 1-D positions. False (the safe default for a new class) runs full
        forwards; `hooks.prefix` says why for the classes here.
    out_proj: the attention module's output projection, relative to it (`o_proj`); its input
        is the concatenation of the heads' outputs, head h in columns `h*head_dim..(h+1)*head_dim`
        (the per-head site of `hooks.interventions.heads`).
    n_heads / n_kv_heads / head_dim: text-config attributes giving the number of query heads,
        of key/value heads (grouped-query attention: `n_heads / n_kv_heads` query heads share
        one key/value head) and the per-head width (missing: `hidden_size / n_heads`).
    output_norms: the (attention, MLP) output norms of a "sandwich" decoder layer, applied to
        a sublayer's output before the residual add (Gemma 2 / 3). Used only where a decoder
        layer has the second one: a Gemma-1 layer's `post_attention_layernorm` is its pre-MLP
        norm, and it has no `post_feedforward_layernorm`.
    """

    model_class: str
    family: str
    lm_root: str = "model.language_model"
    unembed: str = "lm_head"
    softcap: bool = False
    required_inputs: tuple[str, ...] = ()
    stateful: tuple[str, ...] = ()
    text_only_format: str | None = None
    image_only_layers: str | None = None
    attention: str = "self_attn"
    cross_attention: str | None = None
    mlp: str = "mlp"
    prefix_cache: bool = False
    out_proj: str = "o_proj"
    n_heads: str = "num_attention_heads"
    n_kv_heads: str = "num_key_value_heads"
    head_dim: str = "head_dim"
    output_norms: tuple[str, str] | None = None
    notes: str = field(default="", compare=False)

    def skipped_layers(self, model: Any, has_image: bool) -> frozenset[int]:
        """Decoder layers the forward does not run for this input (their output = their input).

        Mllama's cross-attention layers are skipped when no image is given: the text config
        attribute named by `image_only_layers` lists them.
        """
        if has_image or self.image_only_layers is None:
            return frozenset()
        return frozenset(int(i) for i in getattr(model.config.get_text_config(), self.image_only_layers, ()) or ())

    @property
    def layers_path(self) -> str:
        return f"{self.lm_root}.layers"

    @property
    def norm_path(self) -> str:
        return f"{self.lm_root}.norm"

    @property
    def embed_path(self) -> str:
        return f"{self.lm_root}.embed_tokens"

    def layers(self, model: Any):
        return get_module(model, self.layers_path)

    def norm(self, model: Any):
        return get_module(model, self.norm_path)

    def unembedding(self, model: Any):
        return get_module(model, self.unembed)

    def softcap_value(self, model: Any) -> float | None:
        """The cap c of `tanh(z / c) * c` that this class applies to its logits, or None."""
        if not self.softcap:
            return None
        cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        return float(cap) if cap else None

    def image_token_id(self, model: Any) -> int:
        cfg = model.config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(cfg, name, None)
            if value is not None:
                return int(value)
        raise UnsupportedModelError(f"{type(model).__name__}'s config names no image token id")

    def head_shape(self, model: Any) -> tuple[int, int, int]:
        """(query heads, key/value heads, head width) of the text decoder's attention."""
        cfg = model.config.get_text_config()
        n_heads = int(getattr(cfg, self.n_heads))
        n_kv = int(getattr(cfg, self.n_kv_heads, None) or n_heads)
        width = getattr(cfg, self.head_dim, None) or cfg.hidden_size // n_heads
        return n_heads, n_kv, int(width)

    def reset_state(self, model: Any) -> None:
        for path in self.stateful:
            owner, _, attr = path.rpartition(".")
            target = get_module(model, owner) if owner else model
            if hasattr(target, attr):
                setattr(target, attr, None)


_REUSE = dict(prefix_cache=True)
_QWEN = dict(required_inputs=("mm_token_type_ids",), stateful=("model.rope_deltas",))
_SANDWICH = dict(output_norms=("post_attention_layernorm", "post_feedforward_layernorm"))

ADAPTERS: dict[str, Adapter] = {
    a.model_class: a
    for a in (
        Adapter("LlavaForConditionalGeneration", "llava", **_REUSE),
        Adapter("LlavaNextForConditionalGeneration", "llava_next", **_REUSE),
        Adapter("LlavaOnevisionForConditionalGeneration", "llava_onevision", **_REUSE),
        Adapter("Qwen2VLForConditionalGeneration", "qwen2_vl", **_QWEN),
        Adapter("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", **_QWEN),
        Adapter("Qwen3VLForConditionalGeneration", "qwen3_vl", **_QWEN,
                notes="deepstack adds visual features at image positions after the first layers; "
                      "the answer position is unaffected"),
        Adapter("Gemma3ForConditionalGeneration", "gemma3", **_REUSE, **_SANDWICH,
                notes="final_logit_softcapping is not applied by this class in transformers 5"),
        Adapter("PaliGemmaForConditionalGeneration", "paligemma", softcap=True, text_only_format="{bos}{text}\n",
                **_SANDWICH,
                notes="PaliGemma 2 (Gemma-2 text) caps logits with tanh; PaliGemma 1 has no cap. The processor "
                      "builds image tokens + BOS + prompt + newline and has no chat template"),
        Adapter("Idefics3ForConditionalGeneration", "idefics3", lm_root="model.text_model", **_REUSE),
        Adapter("MllamaForConditionalGeneration", "mllama", image_only_layers="cross_attention_layers",
                cross_attention="cross_attn",
                notes="cross-attention decoder layers are interleaved with self-attention ones"),
        Adapter("InternVLForConditionalGeneration", "internvl", **_REUSE),
        Adapter("Mistral3ForConditionalGeneration", "mistral3", **_REUSE),
    )
}


def supported_classes() -> list[str]:
    return sorted(ADAPTERS)


def register_adapter(adapter: Adapter) -> None:
    """Make `adapter` the one used for `adapter.model_class` from now on."""
    ADAPTERS[adapter.model_class] = adapter


def _unsupported(class_name: str) -> UnsupportedModelError:
    listed = "\n  ".join(supported_classes())
    return UnsupportedModelError(
        f"no adapter for {class_name}. Supported classes:\n  {listed}\n"
        "To add one, pass load_vlm(..., adapter=hooks.Adapter(model_class=..., family=..., lm_root=...)) "
        "or call hooks.register_adapter(...); see the 'Adding an architecture' notes in hooks/adapters.py."
    )


def adapter_for(model_or_class: Any, adapter: Adapter | None = None) -> Adapter:
    """The adapter for a model (or class name); a given `adapter` wins. Unknown classes raise."""
    name = model_or_class if isinstance(model_or_class, str) else type(model_or_class).__name__
    if adapter is not None:
        return adapter
    if name not in ADAPTERS:
        raise _unsupported(name)
    return ADAPTERS[name]
