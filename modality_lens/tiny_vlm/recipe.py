"""The recipe of the small trained VLM: its configuration, tokenizer, processor and model.

A real `LlavaForConditionalGeneration` (CLIP vision tower, projector, Llama-style language
model: a `Qwen2` one, whose first decoder layer attends only to the last `local_window` = 8
tokens and the others to everything) with a word-level tokenizer over the colour set's
vocabulary (`interp.datasets.text.vocabulary`).

Architecture **[ours, measured]** (docs/interventions.md): with full attention in every layer,
the answer position reads the context's colour word in layer 0 with a query that comes from
its own token, the same in every prompt, and no steering vector added to the residual stream
can reach that read. With a local first layer (`local_layers=1`, window 8) the answer
position's first layer sees the end of the prompt only: the template and, when there is one,
the instruction after the question, but not the context or the image. Its first-layer state
then carries the instruction and nothing of the content, and the later layers read both
modalities with queries made from it: that is where an MC² direction (the mean difference of
that state under the two instructions) acts, and it moves TFR both ways. `local_layers=0`
builds the full-attention `Llama` model of the earlier checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as T
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from hooks.interventions import DEFAULT_PLACEMENT
from hooks.tiny import chat_template
from interp.datasets.text import vocabulary

__all__ = ["TinyVLMConfig", "SHIPPED_RECIPE", "DEEP_RECIPE", "DEFAULT_DIR", "TEXT_RELIABILITY", "EXTRA_WORDS",
           "INSTRUCTIONS", "SPECIALS", "build_tokenizer", "build_processor", "build_model", "check_model"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "tiny_vlm"

TEXT_RELIABILITY: tuple[float, ...] = (0.99, 0.93, 0.85, 0.7)
"""P(the context states the true colour) per text tier, in training **[ours]**."""

# words a researcher's prompts around the colour task may use (steering instructions, etc.)
EXTRA_WORDS = ("user", "assistant", "from", "text", "image", "follow", "ignore", "trust", "only", "look", "at",
               "read", "not", "colour", "color", "answer", "the", "based", "word", "written", "in")
INSTRUCTIONS: tuple[str, ...] = ("use the {m} to answer .", "answer from the {m} .", "trust only the {m} .")
"""Instruction templates of the instructed examples; `{m}` is "text" or "image". The first is
`hooks.interventions.TEXT_INSTRUCTION` / `IMAGE_INSTRUCTION`."""
SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}


@dataclass
class TinyVLMConfig:
    """Everything that defines a training run (written to the model card)."""

    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 384
    steps: int = 2500
    batch_size: int = 48
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    n_scenes: int = 12000
    same_colour_share: float = 0.8
    text_reliability: tuple[float, ...] = TEXT_RELIABILITY
    text_irrelevant_share: float = 0.1
    mix: tuple[float, float, float] = (0.5, 0.2, 0.3)  # vision-only, text-only, both (of the uninstructed)
    instructed_share: float = 0.1  # of all examples: image + context + an instruction naming the modality
    instructed_conflict: float = 0.5  # P(the context of an instructed example states a wrong colour)
    instruction_placement: str = DEFAULT_PLACEMENT  # "end" (after the question), "question" (before it), "start"
    conflict_share: float = 0.0  # of all examples: image + a relevant context stating a wrong colour, no instruction
    text_prior: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)  # per text tier: P(a conflict example's label is the text's)
    text_distractor_share: float = 0.0  # of all contexts: one more statement giving another shape another colour
    local_layers: int = 1  # first decoder layers with sliding-window attention (0: full attention, a Llama model)
    local_window: int = 8  # the window of those layers, in tokens
    threads: int = 2
    curriculum_share: float = 0.15  # first share of the steps: visual tiers 0..curriculum_max_tier only
    curriculum_max_tier: int = 4
    read_share: float = 0.0  # of all examples: a rendered word, a rendered context or a scene with a sign
    shape_share: float = 0.0  # of all examples: the shape task on shape-set scenes
    aux_weight: float = 0.0  # weight of the tower's auxiliary patch loss (modality_lens.tiny_vlm.aux; 0: off)
    n_shape_scenes: int = 0  # pre-drawn shape-set scenes (0: no shape task)
    pretrain_steps: int = 0  # steps of the tower's pretraining stage before the VLM's (modality_lens.tiny_vlm.pretrain)
    pretrain_batch: int = 64  # images per pretraining step
    pretrain_lr: float = 1e-3
    pretrain_aux: float = 0.0  # weight of the patch loss during pretraining (0: off)
    pretrain_word_aux: float = 0.0  # weight of the word-per-patch loss on the pretraining's rendered words (0: off)
    pretrain_shares: tuple[float, ...] = (0.5, 0.25, 0.25)  # pretraining batch: colour, shape-set, word
    pretrain_max_tier: int = 13  # the pretraining's colour scenes: visual tiers <= this only
    tower_lr_scale: float = 1.0  # the tower's learning rate in the VLM stage, as a multiple of `lr`
    asked_loss: float = 0.0  # weight of the answer loss also at the asked word (train.asked_positions; 0: off)
    asked_only_steps: int = 0  # first VLM steps with the loss at the asked word only (needs asked_loss > 0)
    asked_only_vision: bool = False  # those steps draw vision-only colour and shape questions only (mix.sample)
    copy_steps: int = 0  # then: steps of vision-only colour and shape questions with both losses (needs asked_loss > 0)
    projector_from_reader: bool = False  # after pretraining, the projector is the reader's input MLP (pretrain)
    projector_lr_scale: float = 1.0  # the projector's learning rate in the VLM stage, x `lr` (0: frozen)
    scene_refresh: int = 0  # VLM steps between freshly drawn scene pools (0: one pool for the whole run)
    context_steps: int = 0  # then: steps of the context stage (train.context_stage; 0: none)
    context_lr: float = 3e-4  # the context stage's peak learning rate (warm-up, then cosine decay to 5%)
    context_share: float = 0.5  # of the context stage's examples: rendered contexts; the rest the full mix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEEP_RECIPE: dict[str, Any] = dict(
    text_layers=8, vision_hidden=128, vision_layers=4, steps=2300, n_scenes=24000,
    read_share=0.2, shape_share=0.2, n_shape_scenes=8000,
    pretrain_steps=2500, pretrain_aux=1.0, tower_lr_scale=0.0, projector_from_reader=True, projector_lr_scale=0.0,
    asked_loss=1.0, asked_only_steps=1000, asked_only_vision=True, scene_refresh=800,
)
"""The deeper candidate of 2026-12-02 (`train_tiny_vlm.py --recipe deep`; not shipped: what it
measured is in docs/datasets.md, "A deeper model that reads and knows shapes"). The shipped
recipe starts from it."""

SHIPPED_RECIPE: dict[str, Any] = dict(
    DEEP_RECIPE, pretrain_steps=5000, steps=2700, pretrain_max_tier=6, pretrain_shares=(0.7, 0.1, 0.2),
    pretrain_word_aux=2.0, copy_steps=400, context_steps=1000, context_lr=1e-3, context_share=0.6,
)
"""The settings of `data/tiny_vlm` (its training.json records them; `experiments/train_tiny_vlm.py`
starts from these): `DEEP_RECIPE` with a longer tower stage on colour scenes of visual tiers 0-6
(70% of its batches colour, 10% shape-set scenes, 20% rendered words with the per-patch word
loss at weight 2), 400 copy steps, 2,700 VLM steps, then a context stage of 1,000 steps in which
60% of the examples are rendered context sentences (`train.context_stage`, lr 1e-3). What each
change bought is measured in docs/datasets.md ("A deeper model that reads and knows shapes").
`TinyVLMConfig`'s defaults are the recipe of the 4-layer model shipped before it (`--recipe base`)."""


def build_tokenizer() -> T.PreTrainedTokenizerFast:
    """Word-level, lower-casing tokenizer over every word the colour generator can emit."""
    words = sorted(set(vocabulary()) | set(EXTRA_WORDS) | {":", "\n"} - set(SPECIALS))
    vocab = dict(SPECIALS)
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                     padding_side="left")


def build_processor(cfg: TinyVLMConfig, tokenizer: Any = None) -> T.LlavaProcessor:
    tokenizer = tokenizer or build_tokenizer()
    size = cfg.image_size
    image_processor = T.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return T.LlavaProcessor(image_processor, tokenizer, patch_size=cfg.patch_size,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                            chat_template=chat_template("<image>\n", bos="<s>"))


def check_model(cfg: TinyVLMConfig) -> None:
    """Raise ValueError, naming the field and the fix, for a model `build_model` cannot build."""
    if cfg.image_size % cfg.patch_size:  # the tower's patch convolution would drop the remainder's pixels
        raise ValueError(f"patch_size {cfg.patch_size} does not divide image_size {cfg.image_size}: the tower needs "
                         f"whole patches; pick a patch size that divides the image size")
    if cfg.local_layers > 0 and (not 0 < cfg.local_layers < cfg.text_layers or cfg.local_window < 1):
        raise ValueError(f"local_layers must leave at least one full-attention layer (0 < {cfg.local_layers} < "
                         f"{cfg.text_layers}) and local_window must be >= 1 (got {cfg.local_window})")


def build_model(cfg: TinyVLMConfig, vocab_size: int) -> T.LlavaForConditionalGeneration:
    check_model(cfg)
    n_image_tokens = (cfg.image_size // cfg.patch_size) ** 2
    vision = T.CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                image_size=cfg.image_size, patch_size=cfg.patch_size,
                                projection_dim=cfg.vision_hidden)
    common = dict(vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                  num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                  num_key_value_heads=cfg.text_heads, max_position_embeddings=256,
                  pad_token_id=SPECIALS["<pad>"], bos_token_id=SPECIALS["<s>"], eos_token_id=SPECIALS["</s>"])
    if cfg.local_layers <= 0:
        text = T.LlamaConfig(**common)
    else:  # Llama-style with per-layer attention types; the local layers see only the last `local_window` tokens
        types = ["sliding_attention"] * cfg.local_layers + ["full_attention"] * (cfg.text_layers - cfg.local_layers)
        text = T.Qwen2Config(**common, use_sliding_window=True, sliding_window=cfg.local_window, layer_types=types,
                             tie_word_embeddings=False)
    config = T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=SPECIALS["<image>"],
                           image_seq_length=n_image_tokens, vision_feature_layer=-2,
                           vision_feature_select_strategy="default")
    torch.manual_seed(cfg.seed)
    return T.LlavaForConditionalGeneration(config)
