"""The `modality-lens` command line: run | dataset | report | check | bench."""

from __future__ import annotations

import argparse
import sys

from interp.errors import ModalityLensError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modality-lens",
        description="Which modality does a vision-language model follow under conflict, and where is it decided?",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from interp.datasets.cli import register as register_dataset

    register_dataset(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModalityLensError as err:
        print(f"modality-lens {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
