"""A trained model's record (its training.json) and what continues from it.

`read_record(dir)` gives the record `experiments/train_tiny_vlm.py` saved and the recipe it
holds; `continue_with_context_stage(dir, cfg)` runs `cfg`'s context stage on a model saved by a
run of the same recipe without one (`train.context_stage` draws from its own streams, so the
weights are those a full run of `cfg` gives: tests/test_tiny_vlm_stages.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from modality_lens.tiny_vlm.recipe import TinyVLMConfig, build_processor

__all__ = ["read_record", "continue_with_context_stage", "BEFORE_THE_FIELD", "CONTEXT_FIELDS"]

BEFORE_THE_FIELD = {"instruction_placement": "question", "local_layers": 0, "read_share": 0.0, "shape_share": 0.0,
                    "n_shape_scenes": 0, "aux_weight": 0.0}
"""Settings whose default changed after checkpoints were written without them: a record that
lacks one was trained with the value it had then, not with today's default."""
CONTEXT_FIELDS = ("context_steps", "context_lr", "context_share")


def read_record(model_dir: Path) -> tuple[dict, TinyVLMConfig]:
    """(training.json of a checkpoint, its TinyVLMConfig; JSON lists back to tuples)."""
    record = json.loads((Path(model_dir) / "training.json").read_text())
    config = {**BEFORE_THE_FIELD, **record["config"]}
    cfg = TinyVLMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return record, cfg


def continue_with_context_stage(model_dir: Path, cfg: TinyVLMConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(model, processor, log): `model_dir`'s model, trained with `cfg`'s recipe but no context
    stage, after `cfg`'s context stage; the log is the saved run's with the stage's added
    (`continued_from` names the weights it started from). ValueError, naming the fix, for a
    recipe without a context stage or a directory of another recipe."""
    from transformers import LlavaForConditionalGeneration

    from modality_lens.tiny_vlm.train import context_stage

    model_dir = Path(model_dir)
    if cfg.context_steps <= 0:
        raise ValueError("this runs the context stage: give the recipe context_steps > 0 (--set context_steps=N)")
    if not (model_dir / "training.json").is_file():
        raise ValueError("no training.json there; give a directory experiments/train_tiny_vlm.py wrote")
    record, trained = read_record(model_dir)
    differ = [f.name for f in dataclasses.fields(cfg) if f.name not in CONTEXT_FIELDS
              and getattr(cfg, f.name) != getattr(trained, f.name)]
    if differ or trained.context_steps:
        raise ValueError("its recipe must be this one without a context stage: it differs in "
                         + (", ".join(differ) or "context_steps (it has run one already)"))
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = build_processor(cfg)
    stage = context_stage(model, processor, cfg)
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    log = {**record["log"], "context_stage": stage, "wall_s": record["log"]["wall_s"] + stage["wall_s"],
           "continued_from": {"path": str(model_dir), "sha256": digest}}
    return model, processor, log
