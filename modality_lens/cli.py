"""The `modality-lens` command line: run | dataset | report | check | bench.

Each command imports what it runs when it runs, so `modality-lens dataset` and `modality-lens
report` never load torch or transformers.
"""

from __future__ import annotations

import argparse
import sys

from interp.datasets.cli import register as register_dataset
from interp.errors import ModalityLensError


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto (default: float32)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a checkpoint's own Python code (read it first)")


def _check(args: argparse.Namespace) -> int:
    from hooks.loading import load_vlm, sample_items

    vlm = load_vlm(args.source, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                   self_check=False)
    a = vlm.adapter
    print(f"model     {a.model_class} from {vlm.source}")
    print(f"adapter   family={a.family} layers={a.layers_path} norm={a.norm_path} unembed={a.unembed} "
          f"softcap={vlm.softcap} required_inputs={list(a.required_inputs) or '-'}")
    print(f"layers    {vlm.n_layers} decoder layers (+ embedding) on {vlm.device}, {vlm.dtype}")
    batches = vlm.passes(sample_items()[:1])
    for name, batch in batches.items():
        g = batch.geometry[0]
        print(f"{name:9s} length={g.length} image={g.image_span or '-'} ({len(g.image_positions)} tokens) "
              f"context={g.context_span or '-'} question={g.question_span} answer={g.answer_position}")
    report = vlm.self_check()
    print(report)
    return 0 if report.ok else 1


def _run(args: argparse.Namespace) -> int:
    from modality_lens.pipeline import run
    from modality_lens.report import format_summary

    run_dir = run(model=args.model, dataset=args.dataset, out=args.out, batch_size=args.batch_size,
                  device=args.device, dtype=args.dtype, limit=args.limit, seed=args.seed, resume=args.resume,
                  image_size=args.image_size, **({"n_per_cell": args.n_per_cell} if args.n_per_cell else {}))
    print(format_summary(run_dir.read_summary()))
    print(f"report: {run_dir.report_path.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from modality_lens.report import report_main

    return report_main(args.run_dir)


def _image_size(text: str) -> int | str | None:
    if text in ("auto", "paper"):
        return None if text == "paper" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size takes auto, paper or a number of pixels, not {text!r}")


def _bench(args: argparse.Namespace) -> int:
    from modality_lens.bench import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modality-lens",
        description="Which modality does a vision-language model follow under conflict, and where is it decided?",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the main job: three passes per case, records, following curve, report",
                         description="Run the vision-only, text-only and conflict passes of every case through the "
                                     "per-layer logit lens; write records, summary.json, figures and report.html.")
    run.add_argument("--model", default=None,
                     help="model directory or hub id (default: the shipped small trained VLM, data/tiny_vlm)")
    run.add_argument("--dataset", default=None,
                     help="a dataset folder (modality-lens dataset ...) or a built-in set: colour (default), shapes")
    run.add_argument("--out", default=None, help="run directory (default: runs/run-seed<SEED>)")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--limit", type=int, default=None, help="only the first N cases")
    run.add_argument("--seed", type=int, default=0,
                     help="seeds the built-in dataset's generation and every bootstrap (default 0)")
    run.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    run.add_argument("--n-per-cell", type=int, default=None,
                     help="built-in sets: groups per (visual, text) tier cell (default 16)")
    run.add_argument("--image-size", type=_image_size, default="auto",
                     help="built-in sets: auto (the model's input size if square and <= 224 px), paper, or pixels")
    _add_model_options(run)
    run.set_defaults(func=_run)
    report = sub.add_parser("report", help="redraw the figures and report.html of a run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    check = sub.add_parser("check", help="load a model, show its adapter and prompt geometry, run the self-check")
    check.add_argument("source", help="a model directory, a hub id (org/name), or tiny:FAMILY (e.g. tiny:llava)")
    _add_model_options(check)
    check.set_defaults(func=_check)
    # the benchmark parses its own options (modality_lens.bench.main); `bench --help` lists them
    bench = sub.add_parser("bench", help="time and memory of the per-layer lens vs a plain forward (mid LLaVA)",
                           add_help=False)
    bench.set_defaults(func=_bench)
    register_dataset(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args) or 0)
    except ModalityLensError as err:
        print(f"modality-lens {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
