"""The model zoo: the papers' models, their hub ids, what each needs, and the study over all of them.

:data:`ZOO` names each model, its Hugging Face id, its class (loaded through the existing
adapter, `hooks.adapters`), the tiny family that stands in for it offline (`hooks.tiny`), the
dtype and batch size of the recipe, and the published shape numbers the memory estimate uses.
:func:`zoo_commands` gives the shell commands of the study (one ``modality-lens run`` per
model, then one ``modality-lens compare``); ``modality-lens zoo run`` runs the same commands in
one process, with ``--stand-in NAME=DIR`` replacing a hub id by a local directory (how the
tests run the recipe end to end on tiny models of each class).

Memory **[ours, an estimate, never measured here: no GPU and no hub]**: weights =
parameters x bytes per value of the dtype; plus, per batch, the keys and values of every layer
over the prompt (2 x layers x tokens x hidden x bytes x batch, an upper bound: grouped-query
attention stores less) and the lens's float32 logits at the answer position (batch x (layers +
1) x vocabulary x 4 bytes); plus 20% for the working activations of one layer and the
allocator. Parameter counts, layers, hidden sizes and vocabularies are the model cards' and
configs' published values as we know them, not read from the checkpoints here; tokens per prompt
are the image tokens at the paper's scene sizes (800x600 and 224x224; the larger) plus about
80 text tokens.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from interp.errors import ArgumentError

__all__ = ["ZOO", "ZooModel", "memory_estimate_gb", "zoo_commands", "zoo_table"]

BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
OVERHEAD = 1.2
PROMPT_TEXT_TOKENS = 80


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str                # short name, also the run directory's name
    hub_id: str
    model_class: str         # the transformers class (an adapter in hooks.adapters)
    tiny_family: str         # the hooks.tiny family that stands in for it offline
    named_by: str            # where the project's sources name it
    params_b: float          # parameters, billions (published)
    n_layers: int
    hidden: int
    vocab: int
    image_tokens: int        # image tokens of a paper-size scene (approximate)
    dtype: str = "bfloat16"
    batch_size: int = 16


ZOO: tuple[ZooModel, ...] = (
    ZooModel("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration", "llava",
             "METHOD §1.5 (the irrelevant-text control, 0.35)", 7.06, 32, 4096, 32064, 576),
    ZooModel("llava-1.6-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", "LlavaNextForConditionalGeneration", "llava_next",
             "METHOD §1.5 (oscillations 1.43 vs 0.71); the Vicuna base is our reading of 'LLaVA-1.6-7B'",
             7.06, 32, 4096, 32064, 2928, batch_size=8),
    ZooModel("qwen2-vl-7b", "Qwen/Qwen2-VL-7B-Instruct", "Qwen2VLForConditionalGeneration", "qwen2_vl",
             "the zoo issue", 8.29, 28, 3584, 152064, 660),
    ZooModel("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl",
             "the zoo issue; METHOD §3 (Du et al. use Qwen2.5-VL-7B)", 8.29, 28, 3584, 152064, 660),
    ZooModel("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3VLForConditionalGeneration", "qwen3_vl",
             "METHOD §3 (Du et al. use Qwen3-VL-2B-Thinking; the Instruct variant answers in one word)",
             2.13, 28, 2048, 151936, 480, batch_size=32),
)


def memory_estimate_gb(m: ZooModel) -> dict[str, float]:
    """The module docstring's estimate, in GB (1e9 bytes), part by part."""
    size = BYTES[m.dtype]
    tokens = m.image_tokens + PROMPT_TEXT_TOKENS
    weights = m.params_b * 1e9 * size
    kv = 2 * m.n_layers * tokens * m.hidden * size * m.batch_size
    lens = m.batch_size * (m.n_layers + 1) * m.vocab * 4
    return {"weights": weights / 1e9, "kv": kv / 1e9, "lens": lens / 1e9,
            "total": (weights + kv + lens) * OVERHEAD / 1e9}


def zoo_table() -> list[list[str]]:
    """One line per model: name, hub id, class, dtype, batch, estimated memory (weights + per batch)."""
    rows = []
    for m in ZOO:
        e = memory_estimate_gb(m)
        rows.append([m.name, m.hub_id, m.model_class, m.dtype, str(m.batch_size),
                     f"~{e['total']:.0f} GB (weights {e['weights']:.1f} + KV {e['kv']:.1f} + lens {e['lens']:.2f}, "
                     f"x{OVERHEAD})", m.named_by])
    return rows


def _selected(names: Sequence[str] | None) -> list[ZooModel]:
    if not names:
        return list(ZOO)
    known = {m.name: m for m in ZOO}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ArgumentError(f"unknown zoo model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[n] for n in names]


def zoo_commands(out: str = "runs/zoo", *, models: Sequence[str] | None = None,
                 stand_ins: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> list[list[str]]:
    """The study as argument lists (each after ``modality-lens``): a run per model, then the comparison.

    Every run draws the colour set at the paper's scene sizes (``--image-size paper``), so that all
    models see the same dataset and `compare` accepts them (``auto`` would follow each model's
    input size).

    `stand_ins` maps a model name to a local directory that replaces its hub id; `extra`
    options (e.g. ``--limit 24``) are added to every run.
    """
    stand_ins = dict(stand_ins or {})
    unknown = [n for n in stand_ins if n not in {m.name for m in ZOO}]
    if unknown:
        raise ArgumentError(f"--stand-in names unknown zoo model(s) {', '.join(unknown)}; "
                            f"choose from {', '.join(m.name for m in ZOO)}")
    chosen = _selected(models)
    runs = [["run", "--model", stand_ins.get(m.name, m.hub_id), "--dtype", m.dtype, "--batch-size",
             str(m.batch_size), "--image-size", "paper", "--out", f"{out}/{m.name}", *extra] for m in chosen]
    return runs + [["compare", *[f"{out}/{m.name}" for m in chosen], "--out", f"{out}/compare"]]


def stand_in_option(text: str) -> tuple[str, str]:
    """NAME=DIR -> (NAME, DIR); the directory must exist."""
    name, sep, folder = str(text).partition("=")
    if not sep or not name or not folder:
        raise ArgumentError(f"--stand-in must be NAME=DIR (e.g. llava-1.5-7b=/tmp/tiny-llava), got {text!r}")
    if not Path(folder).is_dir():
        raise ArgumentError(f"--stand-in {text!r}: {folder} is not a directory; save the model there first")
    return name, folder


def zoo_main(args: Any, run_command: Callable[[list[str]], int]) -> int:
    """``modality-lens zoo list | commands | run``; `run_command` runs one command line (the CLI's main)."""
    if args.action == "list":
        header = ["name", "hub id", "class", "dtype", "batch", "memory (estimate)", "named by"]
        for row in zoo_table():
            print("\n".join([row[0]] + [f"  {h:<18} {c}" for h, c in zip(header[1:], row[1:])]))
        return 0
    extra = [item for key in ("limit", "n_per_cell", "n_boot", "threads") if getattr(args, key, None) is not None
             for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    commands = zoo_commands(args.out, models=args.models, stand_ins=dict(args.stand_in or []), extra=extra)
    if args.action == "commands":
        print("\n".join("modality-lens " + shlex.join(c) for c in commands))
        return 0
    for command in commands:
        print("modality-lens " + shlex.join(command), flush=True)
        code = run_command(command)
        if code:
            return code
    return 0
