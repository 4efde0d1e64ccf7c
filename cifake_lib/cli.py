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

def _tiny_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the model and processor to")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--shape", choices=["tiny", "vit-b-32"], default="tiny",
                   help="tiny: 32x32 input, patch 4 (default); vit-b-32: ViT-B/32's sizes, for benchmarks")


@command("tiny-model", "write a small randomly initialised CLIP (offline, for tests and smoke runs)",
         _tiny_model_args)
def _tiny_model(args: argparse.Namespace) -> int:
    from cifake_lib.models import write_tiny_clip

    path = write_tiny_clip(args.out_dir, seed=args.seed, shape=args.shape)
    print(path)
    return 0



# --- cnn: the CIFAKE paper's CNN baseline (cifake_lib.baseline) -------------


def _cnn_args(p: argparse.ArgumentParser) -> None:
    from cifake_lib.baseline import TrainConfig

    d = TrainConfig()
    add_data_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--arch", choices=("recipe", "paper"), default="recipe",
                   help="recipe: the paper's CNN plus batch norm (default); "
                   "paper: exactly the paper's best topology")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"training batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak Adam learning rate (default {d.lr:g})")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop training after the epoch that crosses this many seconds")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


@command("cnn", "train the CIFAKE paper's CNN (Bird & Lotfi) as a reference detector", _cnn_args)
def _cnn_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.baseline import CNNConfig, TrainConfig, run_cnn
    from cifake_lib.data import load_cifake

    if args.epochs < 1:
        raise CliError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.lr > 0:
        raise CliError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.val_fraction < 1:
        raise CliError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    config = CNNConfig.paper() if args.arch == "paper" else CNNConfig()
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     flip=not args.no_flip, seed=args.seed, time_limit=args.time_limit)
    m = run_cnn(data, args.out, config=config, train_config=tc, device=args.device,
                args={k: v for k, v in vars(args).items() if not k.startswith("_")})
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    else:
        print(f"cnn: test accuracy {m['accuracy']:.4f}, AUC {m['roc_auc']:.4f} "
              f"(threshold {m['threshold']:.3f}, best epoch {m['best_epoch']}/{m['epochs_run']}, "
              f"{m['train_seconds']:.0f}s) -> {args.out}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["report", "smoke"], default="report",
                   help="report: the study as reported (ViT-B/32, full CIFAKE); smoke: every stage on a "
                   "tiny offline CLIP and a few thousand local images, in minutes on a CPU")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="CIFAKE source for every stage (default: [data] data in the config, else "
                   "$CIFAKE_DATA, else hf)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="TOML whose tables override the preset's (see cifake_lib/presets/report.toml)")
    p.add_argument("--out", default="study", metavar="DIR", help="folder for every stage's outputs (default: study)")
    p.add_argument("--notebooks", action="store_true",
                   help="also execute the four notebooks headless and save executed copies in OUT/notebooks")
    p.add_argument("--print-config", action="store_true", help="print the merged config as JSON and exit")


@command("run", "run the whole study: data, zero-shot, probe, fine-tune, CNN, evaluate, robustness, report; "
         "finished stages are skipped, interrupted ones resumed", _run_args)
def _run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.pipeline import PipelineError, load_config, run_study

    try:
        if args.print_config:
            print(json.dumps(load_config(args.preset, args.config), indent=2))
            return 0
        record = run_study(preset=args.preset, data=args.data, config_file=args.config, out=args.out,
                           notebooks=args.notebooks)
    except PipelineError as e:
        raise CliError(str(e)) from None
    ran = sum(s["status"] == "ran" for s in record["steps"])
    print(f"study complete in {args.out}: {ran} step(s) ran, {len(record['steps']) - ran} already complete; "
          f"report: {args.out}/report/report.md")
    return 0


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
