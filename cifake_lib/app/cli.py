"""The `cifake` command. Thin: parses arguments and calls the library.

Every subcommand is registered in `COMMANDS` below as (name, help, add_arguments, run).
Results go to stdout; progress bars and logs go to stderr, so `--json` output pipes cleanly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cifake_lib import __version__
from cifake_lib.core.files import default_data_source


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
    from cifake_lib.clip.models import write_tiny_clip

    path = write_tiny_clip(args.out_dir, seed=args.seed, shape=args.shape)
    print(path)
    return 0


# --- data: load, audit and summarise CIFAKE (cifake_lib.data.load) -----------------


def _data_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (splits, duplicates, skipped, cache, seconds) instead of a table")


@command("data", "load CIFAKE (decoding and caching it once), audit it and print a summary", _data_args)
def _data_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.data.load import format_summary, load_cifake, summarize

    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    summary = summarize(data)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0



# --- cnn: the CIFAKE paper's CNN baseline (cifake_lib.methods.cnn) -------------


def _cnn_args(p: argparse.ArgumentParser) -> None:
    from cifake_lib.methods.cnn import TrainConfig

    d = TrainConfig()
    add_data_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--batch-norm", action="store_true",
                   help="add batch norm after each conv (not in the paper; default: the paper's network)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"training batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak Adam learning rate (default {d.lr:g})")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="train for at most this many seconds; the learning-rate schedule then "
                   "follows the clock, so the model is annealed when time is up (not deterministic)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


@command("cnn", "train the CIFAKE paper's CNN (Bird & Lotfi) as a reference detector", _cnn_args)
def _cnn_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods.cnn import CNNConfig, TrainConfig, run_cnn

    if args.epochs < 1:
        raise CliError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.lr > 0:
        raise CliError(f"--lr must be > 0, got {args.lr}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise CliError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if not 0 <= args.val_fraction < 1:
        raise CliError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    config = CNNConfig(batch_norm=args.batch_norm)
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


# --- zeroshot, probe: frozen CLIP (cifake_lib.methods.zeroshot, cifake_lib.methods.probe) ---


def _clip_eval_args(p: argparse.ArgumentParser) -> None:
    from cifake_lib.clip.models import DEFAULT_MODEL

    add_data_args(p)
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="M",
                   help=f"CLIP Hub id or local model folder (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the image-feature cache")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    from cifake_lib.clip.prompts import PROMPT_SETS

    _clip_eval_args(p)
    p.add_argument("--prompts", default="all", metavar="NAME[,NAME...]",
                   help=f"prompt sets: 'all' (default) or any of {', '.join(PROMPT_SETS)}, or a "
                   ".json/.toml file {\"REAL\": [...], \"FAKE\": [...]}; comma-separated")
    p.add_argument("--marginal", choices=("logsumexp", "mean"), default="logsumexp",
                   help="class-aware sets, image class unknown: log-mean-exp of the class-conditional "
                   "logits (default) or the class-averaged text embedding")


def _check_clip_eval_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.val_fraction < 1:
        raise CliError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")


def _cli_args(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


@command("zeroshot", "zero-shot CLIP with text prompts: one run folder per prompt set, plus summary.csv",
         _zeroshot_args)
def _zeroshot_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.clip.prompts import resolve_prompt_sets
    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods.zeroshot import run_zeroshot

    _check_clip_eval_args(args)
    resolve_prompt_sets(args.prompts)  # fail on a bad name before loading data or the model
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    r = run_zeroshot(data, args.out, model=args.model, prompts=args.prompts, batch_size=args.batch_size,
                     device=args.device, cache=not args.no_cache, figures=not args.no_figures,
                     marginal=args.marginal, args=_cli_args(args))
    if args.json:
        print(json.dumps({"best_on_val": r.best, "summary": r.rows}, indent=2, default=str))
    else:
        for row in r.rows:
            mark = "  <- best on val" if row["prompt_set"] == r.best else ""
            print(f"{row['prompt_set']:>14}: test accuracy {row['accuracy']:.4f} (natural "
                  f"{row['natural_accuracy']:.4f}), AUC {row['roc_auc'] or float('nan'):.4f}{mark}")
        print(f"zeroshot: {len(r.rows)} prompt set(s) in {r.seconds:.0f}s -> {args.out}/summary.csv")
    return 0


def _probe_args(p: argparse.ArgumentParser) -> None:
    _clip_eval_args(p)
    p.add_argument("--mlp", action="store_true",
                   help="a one-hidden-layer MLP probe instead of logistic regression")
    p.add_argument("--hidden", type=int, default=512, help="MLP hidden units (default 512)")


@command("probe", "linear probe (logistic regression, C chosen on validation) on frozen CLIP image features",
         _probe_args)
def _probe_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods.probe import run_probe

    _check_clip_eval_args(args)
    if args.hidden < 1:
        raise CliError(f"--hidden must be >= 1, got {args.hidden}")
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    m = run_probe(data, args.out, model=args.model, mlp=args.mlp, hidden=(args.hidden,),
                  batch_size=args.batch_size, device=args.device, cache=not args.no_cache,
                  figures=not args.no_figures, seed=args.seed, args=_cli_args(args))
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    else:
        key = "alpha" if args.mlp else "C"
        print(f"{m['detector']}: test accuracy {m['accuracy']:.4f}, AUC {m['roc_auc'] or float('nan'):.4f} "
              f"(threshold {m['threshold']:.3f}, {key} {m[key]:g}) -> {args.out}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["report", "smoke"], default="report",
                   help="report: the study as reported (ViT-B/32, full CIFAKE); smoke: every stage on a "
                   "tiny offline CLIP and a few thousand local images, in minutes on a CPU")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="CIFAKE source for every stage (default: [data] data in the config, else "
                   "$CIFAKE_DATA, else hf)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="TOML whose tables override the preset's (see cifake_lib/app/presets/report.toml)")
    p.add_argument("--out", default="study", metavar="DIR", help="folder for every stage's outputs (default: study)")
    p.add_argument("--notebooks", action="store_true",
                   help="also execute the four notebooks headless and save executed copies in OUT/notebooks")
    p.add_argument("--print-config", action="store_true", help="print the merged config as JSON and exit")


@command("run", "run the whole study: data, zero-shot, probe, fine-tune, CNN, evaluate, robustness, report; "
         "finished stages are skipped, interrupted ones resumed", _run_args)
def _run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.app.pipeline import PipelineError, load_config, run_study

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



# --- robustness: every detector under the perturbation battery (cifake_lib.analysis.robustness) ---


def _robustness_args(p: argparse.ArgumentParser) -> None:
    from cifake_lib.data.perturb import PERTURBATIONS

    p.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                   help="run folders, or folders searched recursively for them (a zero-shot folder "
                   "contributes its best prompt set on validation)")
    add_data_args(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for robustness.csv/.json/.md/.png")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate on a stratified subset of N test images (default: the whole test split)")
    p.add_argument("--perturbations", default=None, metavar="NAMES",
                   help=f"comma-separated subset of {','.join(PERTURBATIONS)} (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="scoring batch size (default 256)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")


@command("robustness", "accuracy and AUC of every detector under JPEG, blur, noise, down/up-scaling and "
         "cropping at increasing severity", _robustness_args)
def _robustness(args: argparse.Namespace) -> int:
    from cifake_lib.analysis.robustness import RESULTS_CSV, markdown, robustness_from_runs
    from cifake_lib.data.load import load_cifake, stratified_subset

    names = [n.strip() for n in args.perturbations.split(",") if n.strip()] if args.perturbations else None
    if args.limit is not None and args.limit < 2:
        raise CliError(f"--limit must be at least 2 (one REAL and one FAKE image), got {args.limit}")
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    test = data.test
    if args.limit is not None and args.limit < len(test):
        test = stratified_subset(test, args.limit, seed=args.seed)
    rows = robustness_from_runs(args.runs, test, args.out, perturbations=names, seed=args.seed,
                                batch_size=args.batch_size, device=args.device, data=data.source)
    print(markdown(rows))
    print(f"robustness: {len(rows)} rows on {len(test)} test images -> {args.out}/{RESULTS_CSV}")
    return 0


# --- finetune, evaluate, predict (cifake_lib.methods.finetune, cifake_lib.methods.predict) ---


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from cifake_lib.clip.models import DEFAULT_MODEL
    from cifake_lib.methods.finetune import FinetuneConfig

    d = FinetuneConfig()
    add_data_args(p)
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="M",
                   help=f"CLIP Hub id or local model folder to start from (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: checkpoints/, model/, metrics.json, history.json (may be on Google Drive)")
    g = p.add_argument_group("what to train")
    g.add_argument("--train", default="both", metavar="PARTS",
                   help="what learns: both encoders (= text,image; default), image, text, or prompt (CoOp: "
                   "context vectors before the label word, CLIP frozen, loss ce)")
    g.add_argument("--prompts", default=d.prompts, metavar="NAME",
                   help=f"class prompts: a prompt set name (default {d.prompts}), a .json/.toml file, or a "
                   "zero-shot run folder (its detector.json prompts)")
    g.add_argument("--loss", choices=("flyp", "ce", "clip-label-aware"), default=d.loss,
                   help="flyp (default): FLYP, each image paired with a caption of its label, symmetric in-batch "
                   "contrastive loss; ce: cross-entropy over class-prompt embeddings (FLYP's CE ablation); "
                   "clip-label-aware: in-batch CLIP loss with targets spread over same-label pairs")
    g.add_argument("--n-ctx", type=int, default=d.n_ctx, metavar="N",
                   help=f"--train prompt: number of learned context vectors (default {d.n_ctx}, CoOp's)")
    g.add_argument("--prompt-lr", type=float, default=d.prompt_lr, metavar="LR",
                   help=f"--train prompt: AdamW learning rate of the context (default {d.prompt_lr:g}; CoOp: SGD 2e-3)")
    g.add_argument("--wise-ft", default=None, metavar="A,B,...",
                   help="WiSE-FT: mix zero-shot and fine-tuned weights at each alpha (e.g. 0,0.25,0.5,0.75,1), "
                   "score each on validation, export the best (OUT/wise_ft.csv)")
    g.add_argument("--lp-ft", action="store_true",
                   help="LP-FT: first train only the text side (the class embeddings) with the image "
                   "encoder frozen, then fine-tune as --train says")
    g.add_argument("--lp-steps", type=int, default=None, metavar="N", help="steps of the LP phase (default 10%%)")
    g.add_argument("--freeze-logit-scale", action="store_true", help="keep CLIP's logit scale fixed")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    g.add_argument("--max-steps", type=int, default=None, metavar="S",
                   help="optimizer steps of the whole run (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per forward pass, all processes together (default {d.batch_size})")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, metavar="K",
                   help="forward passes per optimizer step (default 1)")
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help=f"the cosine ends at lr x this (default {d.min_lr_ratio})")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 5%% of the run)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay on weight matrices (default {d.weight_decay})")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help=f"gradient-norm clip (default {d.grad_clip})")
    g.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default=d.mixed_precision,
                   help="auto: bf16 on Ampere+ GPUs, fp16 with loss scaling on older ones (T4), no on CPU")
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    g.add_argument("--jpeg-prob", type=float, default=d.jpeg_prob, help="probability of a random JPEG re-encoding")
    g.add_argument("--blur-prob", type=float, default=d.blur_prob, help="probability of a random Gaussian blur")
    g = p.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="also evaluate on validation every N steps (always at each epoch end)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help=f"stop after this many evaluations without a better validation AUC (default "
                   f"{d.patience}; 0: never)")
    g.add_argument("--save-every", type=int, default=d.save_every, metavar="N",
                   help=f"checkpoint every N steps (default {d.save_every}; also at each epoch end)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, metavar="K",
                   help=f"newest checkpoints kept (default {d.keep_checkpoints})")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUT (refused if the config changed)")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="end this invocation after N optimizer steps (schedule unchanged; --resume continues)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="images per evaluation batch")
    g.add_argument("--log-every", type=int, default=d.log_every, metavar="N", help="log every N steps")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("finetune", "fine-tune CLIP's text and image encoders on CIFAKE (FLYP; CE ablation; CoOp); "
         "checkpoints, resume, best model exported", _finetune_args)
def _finetune_run(args: argparse.Namespace) -> int:
    import json
    import os

    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods.finetune import FinetuneConfig, OutOfMemory, TrainingDiverged, finetune

    if not 0 <= args.val_fraction < 1:
        raise CliError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    try:
        cfg = FinetuneConfig(
            model=args.model, out=args.out, train=args.train, prompts=args.prompts, loss=args.loss,
            epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
            lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay, grad_clip=args.grad_clip, freeze_logit_scale=args.freeze_logit_scale,
            lp_ft=args.lp_ft, lp_steps=args.lp_steps, flip=not args.no_flip, jpeg_prob=args.jpeg_prob,
            blur_prob=args.blur_prob, mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing, eval_every=args.eval_every,
            save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
            patience=args.patience or None, eval_batch_size=args.eval_batch_size, log_every=args.log_every,
            seed=args.seed, cpu=args.cpu, data=args.data, resume=args.resume, stop_after=args.stop_after,
            progress=not args.quiet, n_ctx=args.n_ctx, prompt_lr=args.prompt_lr, wise_ft=args.wise_ft,
        ).validate()
        from cifake_lib.methods.finetune import resolve_prompts

        resolve_prompts(cfg.prompts)  # fail on a bad name before loading data or the model
    except ValueError as e:
        raise CliError(str(e)) from None
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad, progress=not args.quiet)
    try:
        r = finetune(data, cfg, args={k: v for k, v in vars(args).items() if not k.startswith("_")})
    except OutOfMemory as e:  # the user's fix is a smaller --batch-size: a usage error, exit 2
        raise CliError(str(e)) from None
    except TrainingDiverged as e:
        print(f"cifake finetune: {e}", file=sys.stderr)
        return 1
    o = r.outcome
    if r.metrics is None:  # stopped by --stop-after, or not the main process of a multi-process run
        if o.status == "stopped" and os.environ.get("RANK", "0") == "0":
            print(f"finetune: stopped after step {o.step}/{o.total_steps} (--stop-after); continue with "
                  f"--resume -> {args.out}", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps({"status": o.status, "step": o.step, "total_steps": o.total_steps,
                          "best_step": o.best_step, "best_val_auc": o.best_val_auc, "metrics": r.metrics},
                         indent=2, default=str))
    else:
        auc = r.metrics["roc_auc"]
        print(f"finetune:{cfg.train}: test accuracy {r.metrics['accuracy']:.4f}, AUC "
              f"{float('nan') if auc is None else auc:.4f} (threshold {r.metrics['threshold']:.3f}, best step "
              f"{o.best_step}/{o.step}, {o.status}, {o.images_per_second:.0f} img/s) -> {args.out}")
    return 0


def _load_detector_or_fail(name: str, device: str | None):
    from cifake_lib.methods.detectors import load_detector

    try:
        return load_detector(name, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        msg = str(e)  # library errors usually start with the path already
        raise CliError(f"--model {msg}" if msg.startswith(name) else f"--model {name}: {msg}") from None


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--model", required=True, metavar="DIR_OR_ID",
                   help="a run folder (fine-tuned CLIP, zero-shot, probe, CNN), a CLIP model folder or Hub id")
    p.add_argument("--split", choices=("test", "val"), default="test", help="split to score (default test)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json and predictions.csv")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


@command("evaluate", "score a saved detector on a CIFAKE split at its own threshold: metrics.json, "
         "predictions.csv", _evaluate_args)
def _evaluate_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods.predict import evaluate_detector

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.split == "val" and not 0 < args.val_fraction < 1:
        raise CliError(f"--split val needs --val-fraction in (0, 1), got {args.val_fraction}")
    detector = _load_detector_or_fail(args.model, args.device)
    data = load_cifake(args.data, subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
                       dedup=args.dedup, skip_bad=args.skip_bad)
    split = data.test if args.split == "test" else data.val
    m = evaluate_detector(detector, split, args.out, split_name=args.split, model=args.model, data=data.source,
                          seed=args.seed, batch_size=args.batch_size,
                          args={k: v for k, v in vars(args).items() if not k.startswith("_")})
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    else:
        auc = m["roc_auc"]
        print(f"{m['detector']} on {args.split}: accuracy {m['accuracy']:.4f}, AUC "
              f"{float('nan') if auc is None else auc:.4f} (threshold {m['threshold']:.3f}, n {m['n']}) -> {args.out}")
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR_OR_ID",
                   help="a run folder (fine-tuned CLIP, zero-shot, probe, CNN), a CLIP model folder or Hub id")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER", help="images, or folders of images")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")


@command("predict", "p_fake for image files: one JSON line per image, in input order "
         "(exit 1 if any file failed)", _predict_args)
def _predict_run(args: argparse.Namespace) -> int:
    import json

    from cifake_lib.methods.predict import predict_paths

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    detector = _load_detector_or_fail(args.model, args.device)
    failed = 0
    for record in predict_paths(detector, args.inputs, batch_size=args.batch_size):
        failed += "error" in record
        print(json.dumps(record), flush=True)
    if failed:
        print(f"cifake predict: {failed} input(s) could not be scored", file=sys.stderr)
    return 1 if failed else 0



# --- report: report.md from run folders (cifake_lib.analysis.report) ---------------------


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                   help="run folders, or folders searched recursively for them (and for robustness.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, its CSVs and figures")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="CIFAKE source whose test images the galleries and saliency maps show "
                   "(default: none, no galleries)")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the CIs of precision/recall/F1/AP/ECE (default 1000)")
    p.add_argument("--gallery", type=int, default=8, metavar="K",
                   help="images per gallery row (default 8)")
    p.add_argument("--no-saliency", action="store_true", help="skip loading detectors for saliency maps")
    p.add_argument("--embeddings", type=int, default=1000, metavar="N",
                   help="test images in the PCA/t-SNE embedding figure, pretrained vs fine-tuned CLIP "
                   "(with --data; 0: none; default 1000)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, for saliency (default: best available)")


@command("report", "write report.md (comparison with published anchors, per-class, calibration, robustness, "
         "galleries, saliency, generated discussion) from run folders", _report_args)
def _report(args: argparse.Namespace) -> int:
    from cifake_lib.analysis.report import build_report

    if args.n_boot < 0:
        raise CliError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.gallery < 1:
        raise CliError(f"--gallery must be >= 1, got {args.gallery}")
    if args.embeddings < 0:
        raise CliError(f"--embeddings must be >= 0, got {args.embeddings}")
    path = build_report(args.runs, args.out, data=args.data, n_boot=args.n_boot, gallery_k=args.gallery,
                        saliency=not args.no_saliency, device=args.device,
                        embeddings=args.embeddings > 0, embedding_limit=args.embeddings)
    print(path)
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
