"""Cost of the per-layer lens against a plain forward, all methods in one process.

Methods, each producing the lens logits of every layer at the answer position (except (a)):

- ``plain``: `model(**inputs)`, the baseline: the forward a user runs anyway (full logits);
- ``hidden_states``: `output_hidden_states=True`, then final norm + unembedding on the last
  position of every hidden state (the last one is already normed by the model);
- ``transformer_lens``: TransformerBridge `run_with_cache` on the residual hooks + projection;
- ``taps``: our nnsight trace (`hooks.taps.lens`), projecting inside the trace with
  `logits_to_keep=1`.

Time: median of `repeats` rounds after a warm-up; rounds are interleaved (a, b, c, d, a, b, ...)
so drift of the machine hits every method alike. Peak memory: the rise of the process's peak
resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs` before each method) over the
resident set before the call, after freed heap memory is handed back to the OS (glibc
`malloc_trim`); on CUDA, `torch.cuda.max_memory_allocated` over the allocated
memory before the call. Both are reported as ratios to ``plain``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from hooks.loading import load_vlm, sample_items
from hooks.prompts import PromptItem
from hooks.taps import project
from hooks.tiny import tiny_model

__all__ = ["run_benchmark", "main", "peak_memory"]

_PROC = Path("/proc/self")


def _rss_kib(field: str) -> int | None:
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so the resident set counts live memory only.

    Without this, memory freed by one method stays resident and the next method reuses it
    without raising the peak, which would make later methods look free.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        (_PROC / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Bytes by which `fn()` raises peak memory above what was in use before it ran."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return float(peak - before)
    _release_free_memory()
    if not _reset_peak():
        raise RuntimeError("peak memory on the CPU needs Linux /proc/self/clear_refs")
    before = _rss_kib("VmRSS")
    out = fn()
    peak = _rss_kib("VmHWM")
    del out
    return float((peak - before) * 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _methods(vlm: Any, inputs: dict[str, Any], with_tl: bool) -> dict[str, Callable[[], Any]]:
    model = vlm.model

    def plain():
        with torch.no_grad():
            return model(**inputs).logits

    def hidden_states():
        with torch.no_grad():
            hs = model(**inputs, output_hidden_states=True).hidden_states
            last = [h[:, -1, :] for h in hs]
            lens = [project(vlm, h) for h in last[:-1]]
            head = vlm.unembedding(last[-1])  # hs[-1] is already final-normed
            cap = vlm.softcap
            lens.append(torch.tanh(head / cap) * cap if cap else head)
            return torch.stack(lens, dim=1)

    def taps():
        return vlm.lens(inputs, keep_logits=True).logits

    methods = {"plain": plain, "hidden_states": hidden_states}
    if with_tl:
        from hooks.tl_backend import bridge_for, tl_lens

        bridge = bridge_for(vlm)
        methods["transformer_lens"] = lambda: tl_lens(vlm, inputs, bridge=bridge)
    methods["taps"] = taps
    return methods


def run_benchmark(*, family: str = "llava", size: str = "mid", batch_size: int = 4, repeats: int = 5,
                  with_tl: bool = True, device: str | None = None, verbose: bool = True) -> dict[str, Any]:
    """Time and memory of every method on one batch; returns the ratios and the raw numbers."""
    vlm = load_vlm(tiny_model(family, size=size), device=device)
    base = sample_items()
    contexts = ["The square is blue .", "The square is green and small .",
                "The square 's colour is the same as a ripe tomato .", "It is purple ."]
    items = [PromptItem(base[i % 2].question, contexts[i % 4], base[i % 2].image) for i in range(batch_size)]
    inputs = vlm.passes(items, ("conflict",))["conflict"].inputs
    methods = _methods(vlm, inputs, with_tl)
    dev = vlm.device

    outputs = {name: fn() for name, fn in methods.items()}  # warm-up, and the agreement check
    ref = outputs["taps"]
    agreement = {name: float((out - ref).abs().max()) for name, out in outputs.items() if name != "plain"}
    agreement["plain_last_layer"] = float((outputs["plain"][:, -1, :] - ref[:, -1, :]).abs().max())
    del outputs

    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            _sync(dev)
            start = time.perf_counter()
            out = fn()
            _sync(dev)
            times[name].append(time.perf_counter() - start)
            del out
    median = {name: statistics.median(ts) for name, ts in times.items()}
    memory = {name: peak_memory(fn, dev) for name, fn in methods.items()}
    seq = int(inputs["input_ids"].shape[1])
    n_params = sum(p.numel() for p in vlm.model.parameters())
    result = {
        "model": f"{family}/{size}", "params": n_params, "batch": batch_size, "seq_len": seq,
        "image_tokens": len(vlm.passes(items[:1], ("conflict",))["conflict"].geometry[0].image_positions),
        "device": str(dev), "threads": torch.get_num_threads(), "repeats": repeats,
        "median_s": median, "peak_bytes": memory, "max_abs_diff_vs_taps": agreement,
        "time_ratio": {name: median[name] / median["plain"] for name in methods},
        # a baseline below 1 MiB (tiny models) makes memory ratios meaningless: None, not a number
        "memory_ratio": {name: (memory[name] / memory["plain"] if memory["plain"] >= 2**20 else None)
                         for name in methods},
    }
    if verbose:
        print(f"{result['model']}: {n_params / 1e6:.1f}M parameters, batch {batch_size}, sequence {seq} "
              f"({result['image_tokens']} image tokens), {dev}, {result['threads']} threads, "
              f"median of {repeats} after a warm-up")
        print(f"{'method':18s} {'median ms':>10s} {'time ratio':>11s} {'peak MB':>9s} {'memory ratio':>13s} "
              f"{'max |diff| vs taps':>19s}")
        for name in methods:
            diff = agreement.get(name, agreement["plain_last_layer"])
            ratio = result["memory_ratio"][name]
            print(f"{name:18s} {median[name] * 1e3:10.1f} {result['time_ratio'][name]:11.3f} "
                  f"{memory[name] / 2**20:9.1f} {'n/a' if ratio is None else f'{ratio:.3f}':>13s} {diff:19.2e}")
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modality-lens bench",
        description="Time and memory of the per-layer lens against a plain forward, hidden states and "
                    "TransformerLens, in one process; the last line prints the ratios as JSON.")
    parser.add_argument("--family", default="llava")
    parser.add_argument("--size", default="mid", choices=["tiny", "mid"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-transformer-lens", action="store_true", help="skip the TransformerBridge method")
    parser.add_argument("--device", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`modality-lens bench`, `python -m modality_lens.bench`, experiments/benchmark_lens.py: the table,
    then the JSON ratios to the plain forward as the last line."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    result = run_benchmark(family=args.family, size=args.size, batch_size=args.batch_size, repeats=args.repeats,
                           with_tl=not args.no_transformer_lens, device=args.device)
    round3 = lambda d: {k: None if v is None else round(v, 3) for k, v in d.items()}  # noqa: E731
    print(json.dumps({"time_ratio": round3(result["time_ratio"]), "memory_ratio": round3(result["memory_ratio"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
