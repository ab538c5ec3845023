"""Cost of the lens and of a case's three passes against a plain forward, all in one process.

Methods, timed on one batch of conflict cases with distinct images (`--batch-size`):

- ``forward``: `model(**inputs, logits_to_keep=1)`, the baseline (1.00): the cheapest forward
  that gives the model's own answer;
- ``forward_full_logits``: `model(**inputs)`, full logits at every position;
- ``hidden_states``: `output_hidden_states=True`, then final norm + unembedding on the last
  position of every hidden state (the last one is already normed by the model);
- ``transformer_lens``: TransformerBridge `run_with_cache` on the residual hooks + projection;
- ``lens``: our nnsight trace of the conflict pass (`hooks.taps.lens`, full lens logits);
- ``three_pass_uncached``: the vision-only, text-only and conflict passes as three full lens
  traces (reduced statistics, as the pipeline runs them), `reuse=False`;
- ``three_pass``: the same three passes on a prefix cache built inside the timed call
  (`hooks.prefix.prefix_lens`: one prefix per image, shared by the vision-only and conflict
  passes), or the uncached passes where the class cannot reuse a prefix.

Rounds are interleaved (every method once per round, after a warm-up round), so drift of the
machine hits all alike; each method's ratio is taken **per round** against that round's
``forward`` and reported as the median with its min-max over the rounds. Peak memory is measured
in the same calls: the rise of the process's peak resident set (Linux `VmHWM`, reset through
`/proc/self/clear_refs`) over the resident set before the call, after freed heap memory is handed
back to the OS (glibc `malloc_trim`); on CUDA, `torch.cuda.max_memory_allocated` over the
allocated memory before the call. The language-model tokens (real, unpadded) of the three passes,
uncached and on the prefix cache, are printed too.
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

from hooks.loading import load_vlm
from hooks.prefix import PrefixCache, prefix_lens, prefix_support
from hooks.taps import project
from hooks.tiny import tiny_model
from interp.datasets.colour import colour_cases
from interp.vocabulary import PASSES
from modality_lens.cases import auto_image_size, case_item, case_pairs

__all__ = ["run_benchmark", "main", "peak_memory", "measure", "paired_ratios"]

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


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(seconds `fn()` took, bytes by which it raised peak memory above what was in use before it)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return seconds, float(peak - before)
    _release_free_memory()
    if not _reset_peak():
        raise RuntimeError("peak memory on the CPU needs Linux /proc/self/clear_refs")
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    del out
    return seconds, float((peak - before) * 1024)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Bytes by which `fn()` raises peak memory above what was in use before it ran."""
    return measure(fn, device)[1]


def paired_ratios(values: dict[str, list[float]], base: str, floor: float = 0.0) -> dict[str, dict | None]:
    """Per method: median, min and max over rounds of value[round] / value_of_base[round].

    A round whose base is below `floor` gives no ratio (memory of tiny models); a method with no
    ratio left gets None.
    """
    out: dict[str, dict | None] = {}
    for name, series in values.items():
        ratios = [v / b for v, b in zip(series, values[base]) if b > floor]
        out[name] = ({"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
                     if ratios else None)
    return out


def _cases(vlm: Any, batch_size: int) -> list[Any]:
    """`batch_size` conflict cases of the built-in colour set, each with its own image."""
    size = auto_image_size(vlm.processor)
    found, seen = [], set()
    for case in colour_cases(-(-batch_size // 14), 0, image_size=size, controls=False):  # 14 scenes a group
        if case.image_name not in seen:
            seen.add(case.image_name)
            found.append(case)
        if len(found) == batch_size:
            return found
    raise ValueError(f"the colour set has fewer than {batch_size} distinct scenes")


def _methods(vlm: Any, cases: list[Any], with_tl: bool) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    model = vlm.model
    batches = vlm.passes([case_item(c) for c in cases], PASSES)
    inputs = batches["conflict"].inputs
    ids = sorted({t for p in case_pairs(vlm.tokenizer, cases) for t in p.ids})
    reduced = dict(keep_logits=False, candidate_ids=ids, top_k=1)
    reuse, _ = prefix_support(vlm)
    made: dict[str, Any] = {"cache": None}

    def forward():
        with torch.no_grad():
            return model(**inputs, logits_to_keep=1).logits

    def forward_full_logits():
        with torch.no_grad():
            return model(**inputs).logits

    def hidden_states():
        with torch.no_grad():
            hs = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states
            last = [h[:, -1, :] for h in hs]
            lens = [project(vlm, h) for h in last[:-1]]
            head = vlm.unembedding(last[-1])  # hs[-1] is already final-normed
            cap = vlm.softcap
            lens.append(torch.tanh(head / cap) * cap if cap else head)
            return torch.stack(lens, dim=1)

    def three_pass_uncached():
        return [vlm.lens(batches[name], **reduced) for name in PASSES]

    def three_pass():
        if not reuse:
            return three_pass_uncached()
        made["cache"] = cache = PrefixCache()
        return [prefix_lens(vlm, batches[name], cache, **reduced) for name in PASSES]

    methods = {"forward": forward, "forward_full_logits": forward_full_logits, "hidden_states": hidden_states}
    if with_tl:
        from hooks.tl_backend import bridge_for, tl_lens

        bridge = bridge_for(vlm)
        methods["transformer_lens"] = lambda: tl_lens(vlm, inputs, bridge=bridge)
    methods["lens"] = lambda: vlm.lens(inputs, keep_logits=True).logits
    methods["three_pass_uncached"] = three_pass_uncached
    methods["three_pass"] = three_pass
    return methods, {"batches": batches, "made": made}


def _agreement(outputs: dict[str, Any]) -> dict[str, float]:
    """Largest |difference| of each method's result from the lens (three-pass: from the uncached passes)."""
    ref = outputs["lens"]
    out = {name: float((outputs[name] - ref).abs().max()) for name in ("hidden_states", "transformer_lens")
           if name in outputs}
    for name in ("forward", "forward_full_logits"):
        out[name] = float((outputs[name][:, -1, :] - ref[:, -1, :]).abs().max())
    worst = 0.0
    for got, want in zip(outputs["three_pass"], outputs["three_pass_uncached"]):
        for field in ("entropy", "candidate_logits", "logsumexp"):
            worst = max(worst, float((getattr(got, field) - getattr(want, field)).abs().max()))
        worst = max(worst, float((got.top_ids != want.top_ids).any()) * float("inf"))
    out["three_pass"] = worst
    return out


def _tokens(batches: dict[str, Any], cache: PrefixCache | None) -> dict[str, int | None]:
    uncached = sum(g.length - g.n_pad for b in batches.values() for g in b.geometry)
    run = uncached if cache is None else cache.prefix_tokens + cache.suffix_tokens
    return {"uncached": uncached, "three_pass": run}


def run_benchmark(*, model: str | None = None, family: str = "llava", size: str = "mid", batch_size: int = 4,
                  repeats: int = 5, with_tl: bool = True, device: str | None = None,
                  verbose: bool = True) -> dict[str, Any]:
    """Time and memory of every method on one batch; returns the paired ratios and the raw numbers.

    `model`: a directory, hub id or "tiny:FAMILY" (`hooks.loading.load_vlm`); None builds
    `hooks.tiny.tiny_model(family, size)` (default: the 576-image-token LLaVA).
    """
    vlm = load_vlm(model if model is not None else tiny_model(family, size=size), device=device)
    cases = _cases(vlm, batch_size)
    methods, extra = _methods(vlm, cases, with_tl)
    dev = vlm.device
    outputs = {name: fn() for name, fn in methods.items()}  # warm-up, and the agreement check
    agreement = _agreement(outputs)
    del outputs
    times: dict[str, list[float]] = {name: [] for name in methods}
    memory: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            seconds, peak = measure(fn, dev)
            times[name].append(seconds)
            memory[name].append(peak)
    batches = extra["batches"]
    result = {
        "model": model or f"{family}/{size}", "class": vlm.adapter.model_class,
        "params": sum(p.numel() for p in vlm.model.parameters()), "batch": batch_size,
        "seq_len": int(batches["conflict"].inputs["input_ids"].shape[1]),
        "image_tokens": len(batches["conflict"].geometry[0].image_positions),
        "device": str(dev), "threads": torch.get_num_threads(), "repeats": repeats,
        "prefix_cache": prefix_support(vlm)[0],
        "median_s": {name: statistics.median(ts) for name, ts in times.items()},
        "median_peak_bytes": {name: statistics.median(ms) for name, ms in memory.items()},
        "max_abs_diff": agreement,
        "time_ratio": paired_ratios(times, "forward"),
        # a baseline below 1 MiB (tiny models) makes memory ratios meaningless: None, not a number
        "memory_ratio": paired_ratios(memory, "forward", floor=2**20),
        "lm_tokens": _tokens(batches, extra["made"]["cache"]),
    }
    if verbose:
        _print_table(result)
    return result


def _span(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['median']:.3f} [{r['min']:.2f}-{r['max']:.2f}]"


def _print_table(result: dict[str, Any]) -> None:
    print(f"{result['model']} ({result['class']}): {result['params'] / 1e6:.1f}M parameters, batch {result['batch']}, "
          f"conflict sequence {result['seq_len']} ({result['image_tokens']} image tokens), {result['device']}, "
          f"{result['threads']} threads; ratios to `forward` (logits_to_keep=1), paired per round: median "
          f"[min-max] of {result['repeats']} rounds after a warm-up")
    print(f"{'method':20s} {'median ms':>10s} {'time ratio':>22s} {'peak MB':>9s} {'memory ratio':>22s} "
          f"{'max |diff|':>11s}")
    for name, seconds in result["median_s"].items():
        diff = result["max_abs_diff"].get(name)
        print(f"{name:20s} {seconds * 1e3:10.1f} {_span(result['time_ratio'][name]):>22s} "
              f"{result['median_peak_bytes'][name] / 2**20:9.1f} {_span(result['memory_ratio'][name]):>22s} "
              f"{'' if diff is None else f'{diff:.2e}':>11s}")
    tokens = result["lm_tokens"]
    print(f"language-model tokens of the three passes: {tokens['uncached']} uncached, {tokens['three_pass']} on the "
          f"prefix cache ({tokens['three_pass'] / tokens['uncached']:.3f}x)"
          + ("" if result["prefix_cache"] else "; this class runs full forwards (no prefix cache)"))


def summary_line(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the headline ratios (median, min, max), each against `forward`."""
    round3 = lambda r: None if r is None else {k: round(v, 3) for k, v in r.items()}  # noqa: E731
    tokens = result["lm_tokens"]
    return {
        "model": result["model"],
        "three_pass_ratio": round3(result["time_ratio"]["three_pass"]),
        "three_pass_uncached_ratio": round3(result["time_ratio"]["three_pass_uncached"]),
        "lens_ratio": round3(result["time_ratio"]["lens"]),
        "memory_ratio": round3(result["memory_ratio"]["lens"]),
        "lm_tokens_ratio": round(tokens["three_pass"] / tokens["uncached"], 3),
        "time_ratio": {name: round3(r) for name, r in result["time_ratio"].items()},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modality-lens bench",
        description="Time and memory of the lens and of a case's three passes against a forward with "
                    "logits_to_keep=1, in one process; the last line prints the ratios as JSON.")
    parser.add_argument("--model", default=None,
                        help="a model directory, hub id or tiny:FAMILY (e.g. data/tiny_vlm, the shipped model); "
                             "default: the 576-image-token LLaVA of --family/--size")
    parser.add_argument("--family", default="llava")
    parser.add_argument("--size", default="mid", choices=["tiny", "mid"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-transformer-lens", action="store_true", help="skip the TransformerBridge method")
    parser.add_argument("--device", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`modality-lens bench`, `python -m modality_lens.bench`, experiments/benchmark_lens.py: the table,
    then the JSON line of the headline ratios."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("modality-lens bench: --threads must be at least 1")
        torch.set_num_threads(args.threads)
    result = run_benchmark(model=args.model, family=args.family, size=args.size, batch_size=args.batch_size,
                           repeats=args.repeats, with_tl=not args.no_transformer_lens, device=args.device)
    print(json.dumps(summary_line(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
