"""The `modality-lens` command line: run | perturb | consistency | compare | zoo | dataset | report | check | bench.

Each command imports what it runs when it runs, so `modality-lens dataset` and `modality-lens
report` never load torch or transformers. Every option is checked for type and range while
the command line is parsed (`modality_lens.arguments`), so a bad value stops with exit 2 before
a model is loaded or a file written; errors the toolkit raises on purpose
(`interp.errors.ModalityLensError`) and failed reads and writes print one line, exit 2; Ctrl-C
prints how to continue, exit 130. None of them prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from interp.datasets.cli import register as register_dataset
from interp.errors import ModalityLensError
from modality_lens import arguments as checks

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _option(check: Callable[..., Any], *names: str) -> Callable[[str], Any]:
    """An argparse type from one of `modality_lens.arguments`' checks (its message is argparse's)."""

    def parse(text: str) -> Any:
        try:
            return check(*names, text)
        except ModalityLensError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def _loading_check(name: str) -> Callable[[str], str]:
    """An argparse type that checks its text with `hooks.loading.<name>` and keeps the text;
    hooks.loading (and torch) is imported only when the option is given."""

    def check(text: str) -> str:
        from hooks import loading

        getattr(loading, name)(text)
        return text

    check.__name__ = name
    return _option(check)


def _add_model_options(parser: argparse.ArgumentParser, remote_code: bool) -> None:
    parser.add_argument("--device", type=_loading_check("parse_device"), default=None,
                        help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", type=_loading_check("parse_dtype"), default=None,
                        help="float32, bfloat16, float16 or auto (default: float32)")
    parser.add_argument("--device-map", choices=("auto",), default=None,
                        help="auto: spread the model over the visible GPUs (then the CPU) as it loads, for a model "
                             "larger than one GPU (needs accelerate; not with --device)")
    parser.add_argument("--skip-memory-check", dest="memory_check", action="store_false",
                        help="load without first checking that the estimated weights (parameters x dtype bytes, "
                             "+20%%) fit in the free memory of the target")
    if remote_code:
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="allow a checkpoint's own Python code (read it first)")


def _add_job_options(parser: argparse.ArgumentParser, *, job: str, unit: str, batch_default: int, seeds: str) -> None:
    """The options every job that writes a run directory takes (run, perturb, consistency)."""
    parser.add_argument("--model", default=None,
                        help="model directory, hub id or tiny:FAMILY (default: the shipped small trained VLM, "
                             "data/tiny_vlm)")
    parser.add_argument("--out", default=None, help=f"run directory (default: runs/{job}-seed<SEED>)")
    parser.add_argument("--batch-size", type=_option(checks.positive_int, "--batch-size"), default=batch_default,
                        help=f"{unit.split(' (')[0]} per batch, >= 1 (default {batch_default})")
    parser.add_argument("--limit", type=_option(checks.positive_int, "--limit"), default=None,
                        help=f"only the first N {unit}, N >= 1")
    parser.add_argument("--seed", type=_option(checks.non_negative_int, "--seed"), default=0,
                        help=f"seeds {seeds} and every bootstrap, >= 0 (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    parser.add_argument("--threads", type=_option(checks.positive_int, "--threads"), default=None,
                        help="CPU threads for torch, >= 1 (default: torch's own choice; 1 is faster on a busy machine)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help=f"where the {unit.split(' (')[0]} are computed: this process (default) or Ray workers, "
                             "one model replica each (needs the ray extra; docs/scaling.md)")
    parser.add_argument("--address", default=None,
                        help="--engine ray: an existing cluster's address, e.g. auto or ray://HEAD:10001 (default: "
                             "start a local cluster for this run)")
    parser.add_argument("--workers", type=_option(checks.positive_int, "--workers"), default=2,
                        help="--engine ray: workers, >= 1 (default 2)")
    parser.add_argument("--gpus-per-worker", type=_option(checks.non_negative_float, "--gpus-per-worker"),
                        default=0.0, help="--engine ray: GPUs per worker, >= 0 (default 0: CPU workers)")
    _add_model_options(parser, remote_code=False)


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every job function takes from `_add_job_options`' options (and the model's)."""
    engine = None
    if args.engine != "local" or args.address is not None or args.gpus_per_worker:
        from modality_lens.engine import EngineOptions

        engine = EngineOptions(name=args.engine, address=args.address, workers=args.workers,
                               gpus_per_worker=args.gpus_per_worker)
    return dict(device=args.device, dtype=args.dtype, threads=args.threads, device_map=args.device_map,
                memory_check=args.memory_check, **({"engine": engine} if engine is not None else {}))


def _check(args: argparse.Namespace) -> int:
    from hooks.loading import LoadNote, load_vlm, sample_items

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadNote)  # printed below, once
        vlm = load_vlm(args.source, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                       self_check=False, device_map=args.device_map, memory_check=args.memory_check)
    a = vlm.adapter
    print(f"model     {a.model_class} from {vlm.source}")
    for note in vlm.notes:
        print(f"note      {note}")
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

    options = dict(model=args.model, dataset=args.dataset, batch_size=args.batch_size, limit=args.limit,
                   image_size=args.image_size, **({"n_per_cell": args.n_per_cell} if args.n_per_cell else {}),
                   reuse=args.reuse, n_boot=args.n_boot, region_width=args.region_width, layers=args.layers,
                   **_job_options(args))
    if args.seeds:
        from modality_lens.seeds import print_seeds, run_seeds

        if args.seed != 0:
            raise ModalityLensError("give --seeds or --seed, not both (--seeds runs every seed it lists)")
        out = Path(args.out) if args.out else Path("runs") / "run-seeds"
        print_seeds(run_seeds(args.seeds, out=out, resume=args.resume, **options), out)
        return 0
    run_dir = run(out=args.out, seed=args.seed, resume=args.resume, **options)
    print(format_summary(run_dir.read_summary()))
    print(f"report: {run_dir.report_path.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from modality_lens.report import report_main

    try:  # a perturbation run's run.json says so; anything unreadable is report_main's to explain
        job = json.loads((Path(args.run_dir) / "run.json").read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        job = None
    if job == "consistency":
        from modality_lens.consistency import report_consistency_main

        return report_consistency_main(args.run_dir)
    if job == "perturb":
        from modality_lens.perturb import report_perturb_main

        return report_perturb_main(args.run_dir)
    return report_main(args.run_dir, n_boot=args.n_boot, region_width=args.region_width, layers=args.layers)


def _add_summary_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--n-boot, --region-width and --layers: how the summary is computed from the records."""
    keep = " (default: as the run recorded)" if not defaults else ""
    parser.add_argument("--n-boot", type=_option(checks.positive_int, "--n-boot"), default=1000 if defaults else None,
                        help="bootstrap resamples of every interval, >= 1" + (" (default 1000)" if defaults else keep))
    parser.add_argument("--region-width", type=_option(checks.region_width_option), default=0.5 if defaults else None,
                        help="half-width of the ambiguous region |ΔH_rel − balance point| <= W, in ΔH_rel units"
                             + (" (default 0.5, the paper's)" if defaults else keep))
    parser.add_argument("--layers", type=_option(checks.layers_option), default=None,
                        help="lens positions whose switches count: all (every decoder layer) or a list like 2-4,6 "
                             "(0 = embedding output, l = after decoder layer l)" + (" (default all)" if defaults else keep))


def _bench(args: argparse.Namespace) -> int:
    from modality_lens.bench import main as bench_main

    return bench_main(args.bench_args)


def _parse_seeds(text: str) -> list[int]:
    from modality_lens.seeds import parse_seeds

    return parse_seeds(text)


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="the main job: three passes per case, records, following curve, report",
                         description="Run the vision-only, text-only and conflict passes of every case through the "
                                     "per-layer logit lens; write records, summary.json, figures and report.html.")
    run.add_argument("--dataset", type=_option(checks.dataset_source), default=None,
                     help="a dataset folder (modality-lens dataset ...) or a built-in set: colour (default), shapes")
    run.add_argument("--n-per-cell", type=_option(checks.positive_int, "--n-per-cell"), default=None,
                     help="built-in sets: groups per (visual, text) tier cell, >= 1 (default 16)")
    run.add_argument("--image-size", type=_option(checks.image_size_option), default="auto",
                     help="built-in sets: auto (the model's input size if square and <= 224 px), paper, or "
                          f"pixels >= {checks.MIN_IMAGE_SIZE}")
    run.add_argument("--no-reuse", dest="reuse", action="store_false",
                     help="compute every pass of every case as a full forward (no deduplication, no prefix cache; "
                          "the reference the reused computation must equal)")
    run.add_argument("--seeds", type=_option(_parse_seeds), default=None,
                     help="several dataset seeds, e.g. 0,1,2: one run per seed in OUT/seed-<K>/ (OUT default "
                          "runs/run-seeds) and a comparison with the balance point's spread across seeds")
    _add_summary_options(run, defaults=True)
    _add_job_options(run, job="run", unit="cases", batch_default=16, seeds="the built-in dataset's generation")
    run.set_defaults(func=_run)


def _perturb(args: argparse.Namespace) -> int:
    from modality_lens.perturb import run_perturb
    from modality_lens.perturb_report import level_rows

    run_dir = run_perturb(model=args.model, dataset=args.dataset, out=args.out, perturbations=args.perturbations,
                          levels=args.levels, n_levels=args.n_levels, conflict=args.conflict,
                          n_samples=args.n_samples, vcd_alpha=args.vcd_alpha, vcd_beta=args.vcd_beta,
                          batch_size=args.batch_size, limit=args.limit, seed=args.seed, resume=args.resume,
                          n_per_cell=args.n_per_cell, image_size=args.image_size, **_job_options(args))
    for pass_name, perts in run_dir.read_summary()["passes"].items():
        for name, entry in perts.items():
            print(f"{pass_name} / {name}: level, accuracy [95% CI], max p, NMLP")
            for row in level_rows(entry):
                print(f"  {row[0]}  {row[2]}  {row[3]}  {row[4]}")
    print(f"report: {run_dir.report_path.resolve()}")
    return 0


def _real_option(name: str, low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (value >= low and (high is None or value <= high)):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {text!r}")
        return value

    return parse


def _add_perturb(sub: Any) -> None:
    from modality_lens import perturb_args

    p = sub.add_parser("perturb", help="confidence under visual perturbation: does the model know when it cannot see?",
                       description="Run the vision-only (and with --conflict the conflict) pass of every case at every "
                                   "level of every image perturbation through the per-layer lens; write records, "
                                   "summary.json (accuracy, confidence, calibration, per-layer AUROC, voting), figures "
                                   "and report.html.")

    p.add_argument("--dataset", type=_option(checks.dataset_source), default=None,
                   help="a dataset folder or a built-in set: colour (default), shapes")
    p.add_argument("--perturbations", type=_option(perturb_args.perturbations_option), default=None,
                   help="comma-separated: noise, blur, occlusion, crop (default: all four)")
    p.add_argument("--levels", type=_option(perturb_args.levels_option), default=None,
                   help="comma-separated levels in [0, 1] (0, the original, is always added; default: i/N, i = 0..N)")
    p.add_argument("--n-levels", type=_option(checks.positive_int, "--n-levels"), default=8,
                   help="N of the probe levels i/N (diffusion steps round(i*999/N)), >= 1 (default 8)")
    p.add_argument("--conflict", action="store_true", help="also the conflict pass (TFR against the level)")
    p.add_argument("--n-samples", type=_option(checks.positive_int, "--n-samples"), default=32,
                   help="answers sampled per row for the voting curves, >= 1 (default 32)")
    p.add_argument("--vcd-alpha", type=_real_option("--vcd-alpha", 0.0), default=1.0,
                   help="alpha of visual contrastive decoding, >= 0 (default 1)")
    p.add_argument("--vcd-beta", type=_real_option("--vcd-beta", 0.0, 1.0), default=0.1,
                   help="beta of VCD's plausibility cut-off, in [0, 1] (default 0.1)")
    p.add_argument("--n-per-cell", type=_option(checks.positive_int, "--n-per-cell"), default=None,
                   help="built-in sets: groups per (visual, text) tier cell, >= 1 (default 16)")
    p.add_argument("--image-size", type=_option(checks.image_size_option), default="auto",
                   help="built-in sets: auto, paper, or pixels")
    _add_job_options(p, job="perturb", unit="images (vision-only units)", batch_default=16,
                     seeds="the dataset, the perturbations, the samples")
    p.set_defaults(func=_perturb)



def _consistency(args: argparse.Namespace) -> int:
    from modality_lens.consistency import run_consistency
    from modality_lens.consistency_report import metric_rows

    if args.typographic:
        return _typographic(args)

    run_dir = run_consistency(model=args.model, items=args.items, n_items=args.n_items, variants=args.variants,
                              max_new_tokens=args.max_new_tokens, ocr=args.ocr,
                              ocr_max_new_tokens=args.ocr_max_new_tokens, batch_size=args.batch_size,
                              limit=args.limit, seed=args.seed, resume=args.resume, out=args.out,
                              canvas=args.canvas, **_job_options(args))
    print("variant, subset, n, RER, CFR, MMC, accuracy text / image / mixed [95% CI], invalid")
    for row in metric_rows(run_dir.read_summary()):
        print("  " + "  ".join(row))
    print(f"report: {run_dir.report_path.resolve()}")
    return 0


def _typographic(args: argparse.Namespace) -> int:
    from modality_lens.consistency_typographic import run_typographic
    from modality_lens.report import format_summary

    run_dir = run_typographic(model=args.model, n_per_cell=args.n_per_cell, limit=args.limit,
                              batch_size=args.batch_size, seed=args.seed, out=args.out, resume=args.resume,
                              **_job_options(args))
    print(format_summary(run_dir.read_summary()))
    print(f"report: {run_dir.report_path.resolve()}")
    return 0


def _add_consistency(sub: Any) -> None:
    from modality_lens import consistency_args

    p = sub.add_parser("consistency", help="cross-modal consistency: the same item as text, rendered and mixed",
                       description="Ask every item as text, as a rendered image and mixed (context rendered), by "
                                   "greedy generation with the lens at every step; OCR-gate the rendered images; "
                                   "write records, summary.json (RER, CFR, MMC, accuracy, McNemar, similarity and "
                                   "retrieval per layer), figures and report.html.")
    p.add_argument("--items", type=_option(consistency_args.items_option), default="colour",
                   help="colour (the colour set's context sentences, default), soebench, or a .jsonl file of "
                        "question / answer / optional context / optional pattern")
    p.add_argument("--n-items", type=_option(checks.positive_int, "--n-items"), default=24,
                   help="items of a built-in source, >= 1 (default 24)")
    p.add_argument("--variants", type=_option(consistency_args.variants_option), default="default",
                   help="default (DejaVu Sans, 100 DPI, black) or rest+ (3 fonts x 3 DPIs + red text)")
    p.add_argument("--canvas", type=_option(consistency_args.canvas_option), default="auto",
                   help="auto (default: fit every rendering to a square of the model's input side when its processor "
                        "crops or resizes every image to one square, else none), none (the text at its point size, "
                        "any shape), or a square's side in pixels at 100 DPI")
    p.add_argument("--max-new-tokens", type=_option(checks.positive_int, "--max-new-tokens"), default=12,
                   help="generation budget of an answer, >= 1 (default 12)")
    p.add_argument("--no-ocr", dest="ocr", action="store_false", help="skip the OCR gate (no CER = 0 subset)")
    p.add_argument("--ocr-max-new-tokens", type=_option(checks.positive_int, "--ocr-max-new-tokens"), default=48,
                   help="generation budget of a transcription, >= 1 (default 48)")
    p.add_argument("--typographic", action="store_true",
                   help="instead: the typographic conflict (the colour set's context sentence as a sign in the scene; "
                        "the main job's three passes, labels, following curve and report)")
    p.add_argument("--n-per-cell", type=_option(checks.positive_int, "--n-per-cell"), default=None,
                   help="--typographic: groups per (visual, text) tier cell, >= 1 (default 16)")
    _add_job_options(p, job="consistency", unit="items", batch_default=8, seeds="the items")
    p.set_defaults(func=_consistency)



def _compare(args: argparse.Namespace) -> int:
    from modality_lens.compare import compare_main

    return compare_main(args.run_dirs, out=args.out, allow_mixed=args.allow_mixed)


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="one report over several runs (models, seeds or datasets)",
                       description="Read several run directories and write one table and report: following curves "
                                   "overlaid with their bands, balance points with their CIs, oscillations per region, "
                                   "TFR / VFR and kept counts (docs/figures.md).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of `modality-lens run`")
    p.add_argument("--out", default=None, help="folder for compare.json, figures/ and report.html "
                                               "(default runs/compare)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="compare runs whose datasets differ (generator or parameters; seeds may always differ)")
    p.set_defaults(func=_compare)


def _zoo(args: argparse.Namespace) -> int:
    from modality_lens.zoo import zoo_main

    return zoo_main(args, main)


def _zoo_option(name: str) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        from modality_lens import zoo

        return getattr(zoo, name)(text)

    check.__name__ = name
    return _option(check)


def _add_zoo(sub: Any) -> None:
    p = sub.add_parser("zoo", help="the papers' models: list them, print or run the study over all of them",
                       description="list: each model's hub id, class, dtype, batch size and estimated memory; "
                                   "commands: the shell commands of the study (a run per model, then compare); "
                                   "run: run those commands here (docs/zoo.md).")
    p.add_argument("action", choices=("list", "commands", "run"))
    p.add_argument("--out", default="runs/zoo", help="folder of the runs and the comparison (default runs/zoo)")
    p.add_argument("--models", type=lambda t: [n.strip() for n in t.split(",") if n.strip()], default=None,
                   help="comma-separated zoo names (default: all)")
    p.add_argument("--stand-in", action="append", type=_zoo_option("stand_in_option"), metavar="NAME=DIR",
                   help="replace a model's hub id by a local directory (repeatable)")
    for name in ("--limit", "--n-per-cell", "--n-boot", "--threads"):
        p.add_argument(name, type=_option(checks.positive_int, name), default=None,
                       help=f"passed to every run ({name} of `modality-lens run`)")
    p.set_defaults(func=_zoo)


def build_parser() -> argparse.ArgumentParser:
    from modality_lens.shipped import shipped_image_size

    parser = argparse.ArgumentParser(
        prog="modality-lens",
        description="Which modality does a vision-language model follow under conflict, and where is it decided?",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_perturb(sub)
    _add_consistency(sub)
    _add_compare(sub)
    _add_zoo(sub)
    report = sub.add_parser("report", help="redraw the figures and report.html of a run directory")
    report.add_argument("run_dir")
    _add_summary_options(report, defaults=False)
    report.set_defaults(func=_report)
    check = sub.add_parser("check", help="load a model, show its adapter and prompt geometry, run the self-check")
    check.add_argument("source", help="a model directory, a hub id (org/name), or tiny:FAMILY (e.g. tiny:llava)")
    _add_model_options(check, remote_code=True)
    check.set_defaults(func=_check)
    # the benchmark parses its own options (modality_lens.bench.main); `bench --help` lists them
    bench = sub.add_parser("bench", help="time and memory of the per-layer lens vs a plain forward (mid LLaVA)",
                           add_help=False)
    bench.set_defaults(func=_bench)
    register_dataset(sub, default_image_size=shipped_image_size)
    return parser


def _show_notes(message, category, filename, lineno, file=None, line=None) -> None:
    """Load notes (`hooks.loading.LoadNote`) as one line each; other warnings as Python prints them."""
    if category.__name__ == "LoadNote":
        print(f"modality-lens: note: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    warnings.showwarning = _show_notes
    try:
        return int(args.func(args) or 0)
    except ModalityLensError as err:
        print(f"modality-lens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read or write the checks could not foresee (disk full, permissions)
        where = f" {err.filename}" if err.filename else ""
        print(f"modality-lens {args.command}: error: could not read or write{where}: {err.strerror or err}; "
              "free disk space or fix the permissions, then run the command again (a run continues with --resume)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " Run the same command with --resume to continue it." if args.command in ("run", "perturb", "consistency") else ""
        print(f"\nmodality-lens {args.command}: interrupted.{hint}", file=sys.stderr)
        return INTERRUPTED
    finally:
        warnings.showwarning = _python_showwarning


if __name__ == "__main__":
    sys.exit(main())
