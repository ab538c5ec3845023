"""The small trained VLM shipped in `data/tiny_vlm`: its recipe, training mix, training loop and metrics.

A real `LlavaForConditionalGeneration` (CLIP vision tower, projector, Llama-style language
model: a `Qwen2` one, whose first decoder layer attends only to the last `local_window` = 8
tokens and the others to everything) with a word-level tokenizer over the colour set's
vocabulary, trained from scratch on the CPU on the colour tasks of `interp.datasets.colour`,
then saved with `save_pretrained`, so `load_vlm("data/tiny_vlm")` takes exactly the path of a
hub model. `experiments/train_tiny_vlm.py` trains it, evaluates it and writes its card.

- `recipe`: `TinyVLMConfig`, the constants, the tokenizer, processor and model (and why the
  first layer is local);
- `mix`: the pre-drawn scenes (`ScenePool`) and the training mix (`TrainingMix`, **[ours]**);
- `train`: the training loop (`train`, with its curriculum in `batches`), `check_config` (every
  setting `train` would refuse, checked before any work) and `save`;
- `evaluate`: the held-out metrics (`evaluate`, `instruction_following`).

Measured on past checkpoints (the reliabilities and instructed share that were tried, a longer
training, the shipped recipe's numbers): docs/datasets.md, "Training the shipped model:
measured"; the shipped checkpoint's own metrics are in data/tiny_vlm/MODEL_CARD.md.
"""

from modality_lens.tiny_vlm.recipe import (DEEP_RECIPE, DEFAULT_DIR, EXTRA_WORDS, INSTRUCTIONS, SHIPPED_RECIPE, SPECIALS,
                                           TEXT_RELIABILITY, TinyVLMConfig, build_model, build_processor,
                                           build_tokenizer)
from modality_lens.tiny_vlm.mix import Example, ScenePool, TrainingMix
from modality_lens.tiny_vlm.train import batches, check_config, save, train
from modality_lens.tiny_vlm.evaluate import evaluate, instruction_following

__all__ = ["TinyVLMConfig", "SHIPPED_RECIPE", "DEEP_RECIPE", "TEXT_RELIABILITY", "INSTRUCTIONS", "EXTRA_WORDS",
           "SPECIALS", "DEFAULT_DIR", "build_tokenizer", "build_processor", "build_model", "ScenePool", "Example",
           "TrainingMix", "batches", "check_config", "train", "save", "evaluate", "instruction_following"]
