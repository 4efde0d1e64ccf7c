"""The `cifake` command. Thin: parses arguments and calls the library.

Every subcommand is registered in `COMMANDS` below as (name, help, add_arguments, run).
Results go to stdout; progress bars and logs go to stderr, so `--json` output pipes cleanly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cifake_lib import __version__
from cifake_lib.fileio import default_data_source


class CliError(Exception):
    """A user-facing error: printed as `cifake: error: ...`, exit status 2."""


def parse_subset(text: str) -> tuple[int, int]:
    """`TRAIN:TEST` -> (train, test); both totals per split, half FAKE each."""
    try:
        train, test = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--subset wants TRAIN:TEST, two integers, got {text!r}") from None
    if train <= 0 or test <= 0:
        raise argparse.ArgumentTypeError(f"--subset sizes must be positive, got {text!r}")
    return train, test


def add_data_args(p: argparse.ArgumentParser, *, val_default: float = 0.1) -> None:
    """The data options every stage shares (see DESIGN.md)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=None,
        metavar="SRC",
        help="folder or .tar/.tar.gz/.zip archive in the Kaggle layout, hf[:REPO], kaggle[:HANDLE] "
        f"or github (default: $CIFAKE_DATA, else hf; now: {default_data_source()})",
    )
    g.add_argument("--subset", type=parse_subset, default=None, metavar="TRAIN:TEST",
                   help="stratified subset sizes, e.g. 16000:4000 (default: all)")
    g.add_argument("--val-fraction", type=float, default=val_default, metavar="F",
                   help=f"fraction of the train subset held out for validation (default {val_default})")
    g.add_argument("--seed", type=int, default=0, help="seed for subsets, splits and training (default 0)")
    g.add_argument("--dedup", action="store_true",
                   help="drop test images whose exact content also occurs in train")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable image files (and report them) instead of stopping")


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]
COMMANDS: list[Command] = []


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator registering `run(args)` as subcommand `name`."""

    def register(run: Callable[[argparse.Namespace], int | None]):
        COMMANDS.append((name, help, add_arguments, run))
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifake",
        description="Detect AI-generated images with CLIP on CIFAKE: data, zero-shot, probe, "
        "fine-tuning, analysis. Labels: 1 = FAKE, 0 = REAL.",
    )
    parser.add_argument("--version", action="version", version=f"cifake_lib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


# ---------------------------------------------------------------------------
# Subcommands. Each block: an `add_arguments` function and a `@command` runner.
# Heavy imports stay inside the runners so `cifake --help` is instant.
# ---------------------------------------------------------------------------

# (subcommands go here)


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args._run(args)
    except CliError as e:
        print(f"cifake {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"cifake {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cifake {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)




if __name__ == "__main__":
    sys.exit(main())
