"""Tiny random-weight VLMs of every supported family, with working offline processors.

`tiny_model(family)` builds, with no download, a `(model, processor)` pair whose forward
runs in milliseconds on a CPU: the tests run every architecture on these, and
`tiny_model("llava", size="mid")` gives a ~60M-parameter LLaVA with 576 image tokens for
benchmarks. The tokenizer is a word-level `tokenizers` model over a small vocabulary
(`TINY_WORDS`), so every word of the colour and shape questions is one token.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import transformers as T
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from hooks.processors import HAS_TORCHVISION, PixtralProcessorPil, images_only

__all__ = ["FAMILIES", "TINY_WORDS", "tiny_model", "word_tokenizer", "chat_template"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
IMG, VS, VE = 250, 251, 252
V = 256

# Every word the built-in questions use is a single token in the tiny tokenizers.
TINY_WORDS = (
    "red yellow blue green purple orange white black grey pink brown "
    "circle square triangle star hexagon diamond cross heart ellipse pentagon object shape "
    "what colour color is the a an of same as to on in left right above below next there "
    "please use one word answer this question it its image picture text says "
    "tomato banana sky grass lemon carrot peacock neck ripe sun leaf sea plum grape pumpkin "
    "and or not this that which user assistant system USER ASSISTANT . , ? ! : ' s"
).split()

FAMILIES: tuple[str, ...] = (
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "gemma3",
    "paligemma",
    "paligemma2",
    "idefics3",
    "mllama",
    "internvl",
    "mistral3",
)


def word_tokenizer(
    special: dict[str, int],
    named: dict[str, str] | None = None,
    *,
    words: tuple[str, ...] | list[str] = TINY_WORDS,
    vocab_size: int = V,
    bos: str = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str = "<unk>",
) -> T.PreTrainedTokenizerFast:
    """A word-level fast tokenizer: specials at fixed ids, `words` next, `<unusedN>` fill the rest.

    Splits on whitespace and punctuation, pads on the left (batched lens reads position -1).
    """
    vocab = {pad: PAD, bos: BOS, eos: EOS, unk: UNK, **special}
    taken = set(vocab.values())
    free = [i for i in range(4, vocab_size) if i not in taken]
    for w in words:
        if w not in vocab:
            if not free:
                raise ValueError(f"vocab_size={vocab_size} is too small for {len(words)} words")
            vocab[w] = free.pop(0)
    for i in free:
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [pad, bos, eos, unk, *special]])
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens=named or {},
        padding_side="left",
    )


def chat_template(image: str, user: str = "USER: ", assistant: str = "ASSISTANT:", sep: str = "\n", bos: str = "") -> str:
    """A generic content-list chat template that renders an image entry as `image`.

    Separators are emitted as `{{ '...' }}` because HF's trim_blocks eats a literal newline
    after a `{% %}` tag.
    """
    return (
        bos + "{% for m in messages %}{% if m['role'] == 'user' %}" + user + "{% else %}" + assistant + " {% endif %}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ " + repr(image) + " }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ " + repr(sep) + " }}{% endfor %}{% if add_generation_prompt %}" + assistant + "{% endif %}"
    )


def _video(proc_cls: type, vp_name: str, **settings):
    """(`proc_cls` or its images-only form, the video processor or None, its settings).

    The stock video processors need torchvision; where it is absent (the CPU torch build here
    has no matching torchvision) the tiny processors are built without one, and remember its
    settings so that `save_pretrained` writes the stock layout.
    """
    video = getattr(T, vp_name)(**settings) if HAS_TORCHVISION else None
    return images_only(proc_cls), video, {"video_processor_type": vp_name, **settings}


def _with_video_settings(proc, video, settings: dict):
    if video is None:
        proc.video_settings = settings
    return proc


def _text(**over) -> dict:
    base = dict(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )
    base.update(over)
    return base


_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
             patch_size=8, projection_dim=32)
_SIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32)
_PIN = [[32, 32], [32, 64], [64, 32], [64, 64]]
_QTXT = _text(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
_QIDS = dict(image_token_id=IMG, video_token_id=IMG - 1, vision_start_token_id=VS, vision_end_token_id=VE)
_QTOK = {"<|image_pad|>": IMG, "<|video_pad|>": IMG - 1, "<|vision_start|>": VS, "<|vision_end|>": VE}
_QNAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
           "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}


def _llava(size: str):
    if size == "mid":
        vision = T.CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                    image_size=336, patch_size=14, projection_dim=256)
        vocab = 32064
        text = T.LlamaConfig(**_text(vocab_size=vocab, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                                     num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048))
        img_tok, n_img, px, patch = 32000, 576, 336, 14
    else:
        vision, text, vocab = T.CLIPVisionConfig(**_CLIP), T.LlamaConfig(**_text()), V
        img_tok, n_img, px, patch = IMG, 16, 32, 8
    model = T.LlavaForConditionalGeneration(T.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=img_tok, image_seq_length=n_img,
        vision_feature_layer=-2, vision_feature_select_strategy="default"))
    tok = word_tokenizer({"<image>": img_tok}, {"image_token": "<image>"}, vocab_size=vocab)
    proc = T.LlavaProcessor(
        T.CLIPImageProcessor(size={"shortest_edge": px}, crop_size={"height": px, "width": px}), tok,
        patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n", bos="<s>"))
    return model, proc


def _llava_next(size: str):
    model = T.LlavaNextForConditionalGeneration(T.LlavaNextConfig(
        vision_config=T.CLIPVisionConfig(**_CLIP), text_config=T.LlamaConfig(**_text()), image_token_index=IMG,
        image_grid_pinpoints=_PIN, vision_feature_layer=-2, vision_feature_select_strategy="default"))
    tok = word_tokenizer({"<image>": IMG}, {"image_token": "<image>"})
    ip = T.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_grid_pinpoints=_PIN)
    proc = T.LlavaNextProcessor(ip, tok, patch_size=8, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1, chat_template=chat_template("<image>\n", bos="<s>"))
    return model, proc


def _llava_onevision(size: str):
    model = T.LlavaOnevisionForConditionalGeneration(T.LlavaOnevisionConfig(
        vision_config=T.SiglipVisionConfig(**_SIG, patch_size=8), text_config=T.Qwen2Config(**_text()),
        image_token_index=IMG, video_token_index=IMG - 1, image_grid_pinpoints=_PIN, vision_feature_layer=-1,
        vision_feature_select_strategy="full"))
    tok = word_tokenizer({"<image>": IMG, "<video>": IMG - 1}, {"image_token": "<image>", "video_token": "<video>"})
    ip = T.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=_PIN)
    cls, vp, settings = _video(T.LlavaOnevisionProcessor, "LlavaOnevisionVideoProcessor",
                               size={"height": 32, "width": 32})
    proc = cls(ip, tok, video_processor=vp, num_image_tokens=16, vision_feature_select_strategy="full",
               chat_template=chat_template("<image>\n", bos="<s>"))
    return model, _with_video_settings(proc, vp, settings)


def _qwen(version: str):
    def build(size: str):
        if version == "2":
            cfg = T.Qwen2VLConfig(text_config=dict(_QTXT), vision_config=dict(
                depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=4, spatial_merge_size=2,
                temporal_patch_size=2, in_channels=3), **_QIDS)
            model, proc_cls, vp_cls = T.Qwen2VLForConditionalGeneration(cfg), T.Qwen2VLProcessor, "Qwen2VLVideoProcessor"
        elif version == "2.5":
            cfg = T.Qwen2_5_VLConfig(text_config=dict(_QTXT), vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=4,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16, fullatt_block_indexes=[1]),
                **_QIDS)
            model, proc_cls, vp_cls = (T.Qwen2_5_VLForConditionalGeneration(cfg), T.Qwen2_5_VLProcessor,
                                       "Qwen2VLVideoProcessor")
        else:
            cfg = T.Qwen3VLConfig(text_config=_text(head_dim=16, rope_parameters={
                "rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
                vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                                   patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                                   num_position_embeddings=16, deepstack_visual_indexes=[0, 1]), **_QIDS)
            model, proc_cls, vp_cls = T.Qwen3VLForConditionalGeneration(cfg), T.Qwen3VLProcessor, "Qwen3VLVideoProcessor"
        tok = word_tokenizer(_QTOK, _QNAMED)
        ip = T.Qwen2VLImageProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, min_pixels=64, max_pixels=1024)
        cls, vp, settings = _video(proc_cls, vp_cls, patch_size=4, temporal_patch_size=2, merge_size=2)
        proc = cls(ip, tok, video_processor=vp, chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
        return model, _with_video_settings(proc, vp, settings)
    return build


def _gemma3(size: str):
    model = T.Gemma3ForConditionalGeneration(T.Gemma3Config(
        text_config=T.Gemma3TextConfig(**_text(head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                                final_logit_softcapping=30.0)),
        vision_config=T.SiglipVisionConfig(**_SIG, patch_size=4), mm_tokens_per_image=16, boi_token_index=VS,
        eoi_token_index=VE, image_token_index=IMG))
    tok = word_tokenizer({"<image_soft_token>": IMG, "<start_of_image>": VS, "<end_of_image>": VE},
                         {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                          "eoi_token": "<end_of_image>"})
    proc = T.Gemma3Processor(T.Gemma3ImageProcessor(size={"height": 32, "width": 32}), tok, image_seq_length=16,
                             chat_template=chat_template("<start_of_image>", bos="<s>"))
    return model, proc


def _paligemma(version: int):
    def build(size: str):
        vis = T.SiglipVisionConfig(**_SIG, patch_size=8, vision_use_head=False, projection_dim=64)
        if version == 1:
            text = T.GemmaConfig(**_text(num_key_value_heads=1, head_dim=16))
        else:
            text = T.Gemma2Config(**_text(head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                          final_logit_softcapping=30.0, attn_logit_softcapping=50.0))
        model = T.PaliGemmaForConditionalGeneration(T.PaliGemmaConfig(
            vision_config=vis, text_config=text, image_token_index=IMG, projection_dim=64, hidden_size=64,
            vocab_size=V))
        tok = word_tokenizer({"<image>": IMG}, {"image_token": "<image>"})
        ip = T.SiglipImageProcessor(size={"height": 32, "width": 32})
        ip.image_seq_length = 16  # PaliGemmaProcessor reads this attribute
        return model, T.PaliGemmaProcessor(ip, tok)
    return build


def _idefics3(size: str):
    model = T.Idefics3ForConditionalGeneration(T.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=T.LlamaConfig(**_text()), image_token_id=IMG, scale_factor=2))
    special = {"<image>": IMG, "<fake_token_around_image>": VS, "<global-img>": VE, "<end_of_utterance>": 253}
    special.update({f"<row_{i}_col_{j}>": 100 + 6 * (i - 1) + (j - 1) for i in range(1, 7) for j in range(1, 7)})
    tok = word_tokenizer(special, {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                   "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    ip = T.Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                  do_image_splitting=True)
    proc = T.Idefics3Processor(ip, tok, image_seq_len=4, chat_template=chat_template("<image>", bos="<s>"))
    return model, proc


def _mllama(size: str):
    model = T.MllamaForConditionalGeneration(T.MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=4, image_size=32, patch_size=8, max_num_tiles=4, vision_output_dim=64,
                           intermediate_layers_indices=[0],
                           supported_aspect_ratios=[[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]),
        text_config=dict(_text(vocab_size=V + 8), cross_attention_layers=[1, 3]), image_token_index=IMG))
    tok = word_tokenizer({"<|image|>": IMG, "<|python_tag|>": 253, "<|start_header_id|>": 254,
                          "<|end_header_id|>": 255, "<|eot_id|>": 249},
                         {"image_token": "<|image|>"}, bos="<|begin_of_text|>")
    ip = T.MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=4)
    proc = T.MllamaProcessor(ip, tok, chat_template=chat_template("<|image|>", bos="<|begin_of_text|>"))
    return model, proc


def _internvl(size: str):
    model = T.InternVLForConditionalGeneration(T.InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[32, 32], patch_size=[8, 8]),
        text_config=T.Qwen2Config(**_text()), image_token_id=IMG, image_seq_length=4, downsample_ratio=0.5))
    tok = word_tokenizer({"<IMG_CONTEXT>": IMG, "<img>": VS, "</img>": VE, "<video>": IMG - 1},
                         {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
                          "end_image_token": "</img>", "video_token": "<video>"})
    ip = T.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=2)
    cls, vp, settings = _video(T.InternVLProcessor, "InternVLVideoProcessor", size={"height": 32, "width": 32})
    proc = cls(ip, tok, video_processor=vp, image_seq_length=4, chat_template=chat_template("<IMG_CONTEXT>\n"))
    return model, _with_video_settings(proc, vp, settings)


def _mistral3(size: str):
    model = T.Mistral3ForConditionalGeneration(T.Mistral3Config(
        vision_config=T.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, head_dim=8, image_size=64, patch_size=8),
        text_config=T.MistralConfig(**_text(head_dim=16, sliding_window=None)), image_token_index=IMG,
        spatial_merge_size=2, vision_feature_layer=-1, tie_word_embeddings=False))
    tok = word_tokenizer({"[IMG]": IMG, "[IMG_BREAK]": VS, "[IMG_END]": VE},
                         {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"})
    ip = T.PixtralImageProcessor(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8})
    proc = (T.PixtralProcessor if HAS_TORCHVISION else PixtralProcessorPil)(ip, tok, patch_size=8, spatial_merge_size=2,
                              chat_template=chat_template("[IMG]", bos="<s>"))
    return model, proc


_BUILDERS: dict[str, Callable[[str], tuple]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": _qwen("2"),
    "qwen2_5_vl": _qwen("2.5"),
    "qwen3_vl": _qwen("3"),
    "gemma3": _gemma3,
    "paligemma": _paligemma(1),
    "paligemma2": _paligemma(2),
    "idefics3": _idefics3,
    "mllama": _mllama,
    "internvl": _internvl,
    "mistral3": _mistral3,
}


def tiny_model(family: str, size: str = "tiny", *, seed: int = 0):
    """Build `(model, processor)` for `family` with random weights, offline, in eval mode.

    `size="tiny"`: 4 decoder layers of width 64, vocabulary 256, 32-px images (all families).
    `size="mid"`: LLaVA only, ~62M parameters, 8 layers of width 512, vocabulary 32,064 and a
    336-px CLIP tower giving 576 image tokens (the benchmark model).
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in ("tiny", "mid") or (size == "mid" and family != "llava"):
        raise ValueError(f"size={size!r} is not available for {family!r}: 'tiny' for every family, 'mid' for llava")
    torch.manual_seed(seed)
    verbosity = T.logging.get_verbosity()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            T.logging.set_verbosity_error()
            model, processor = _BUILDERS[family](size)
    finally:
        T.logging.set_verbosity(verbosity)
    _randomise_zero_init(model)
    return model.eval(), processor


def _randomise_zero_init(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give all-zero weight tensors small random values.

    Some classes start weights at zero (Gemma-3's image projection, Gemma's `(1 + w)` norm
    scales). Left at zero, Gemma-3's image features would not depend on the image and a norm
    that forgot the `1 +` would go unnoticed; random values make the tiny models discriminate.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 1 and param.numel() > 1 and not name.endswith("bias") and not param.any():
                param.normal_(0.0, std)
