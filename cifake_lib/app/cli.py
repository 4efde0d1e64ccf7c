"""The `cifake` command: options generated from the stages' settings dataclasses, then the stage.

Each stage command (`data`, `zeroshot`, `probe`, `finetune`, `cnn`, `evaluate`, `robustness`,
`report`) parses its options into its settings (`core.config.build`: types, ranges, choices,
unknown names), calls `app.stages.run_<stage>(data, cfg, out)` and prints the result. `run`
runs them all (`app.pipeline`). Building the parser imports no torch, so `--help` is instant.

Results go to stdout; progress bars and logs go to stderr, so `--json` output pipes cleanly.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cifake_lib import __version__
from cifake_lib.analysis.config import ReportData
from cifake_lib.app import stages
from cifake_lib.app.pipeline import RunConfig, StudyOptions
from cifake_lib.app.push import PushConfig
from cifake_lib.core.config import add_options, build, given, setting, to_toml
from cifake_lib.core.errors import CifakeError, is_disk_full
from cifake_lib.core.lock import study_lock
from cifake_lib.core.outdir import claim_output, write_error
from cifake_lib.data.config import DataConfig
from cifake_lib.methods.config import PredictConfig


class CliError(CifakeError):
    """A user-facing error: printed as `cifake <command>: error: ...`, exit status 2."""


@dataclass
class TinyModelConfig:
    """`cifake tiny-model`: a small randomly initialised model of a backbone family, for tests and offline runs."""

    out_dir: str = setting("", "folder to write the model and processor to", positional=True, metavar="OUT_DIR")
    family: str = setting("clip", "clip (CLIPModel), siglip (SiglipModel, SigLIP 2's tokenizer class) or dinov2 "
                          "(Dinov2Model, image only)", choices=("clip", "siglip", "dinov2"))
    seed: int = setting(0, "initialisation seed")
    shape: str = setting("tiny", "tiny: 32x32 input, patch 4, width 64 (every family); the published sizes, for "
                         "memory and speed checks: vit-b-32, vit-b-16, vit-l-14 (clip), siglip2-base (siglip), "
                         "dinov2-base (dinov2)",
                         choices=("tiny", "vit-b-32", "vit-b-16", "vit-l-14", "siglip2-base", "dinov2-base"))


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    classes: tuple[type, ...]
    run: Callable[[argparse.Namespace], int]
    out: bool = False  # has --out DIR (required)
    json: bool = False  # has --json
    writes: bool = False  # writes a folder (--out or OUT_DIR): the output-folder rule, --overwrite


def _claims(c: Command) -> bool:
    return c.out or c.writes


def _out_and_json(p: argparse.ArgumentParser, c: Command) -> None:
    if c.out:
        p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    if c.json:
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    if _claims(c):
        p.add_argument("--overwrite", action="store_true",
                       help="write into an existing folder even if it holds files cifake did not write")


def build_parser() -> argparse.ArgumentParser:
    """The whole `cifake` parser, generated from the commands' settings classes."""
    parser = argparse.ArgumentParser(
        prog="cifake", allow_abbrev=False,
        description="Detect AI-generated images with CLIP on CIFAKE: data, zero-shot, probe, "
        "fine-tuning, analysis. Labels: 1 = FAKE, 0 = REAL.")
    parser.add_argument("--version", action="version", version=f"cifake_lib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help, allow_abbrev=False)
        add_options(p, *c.classes)
        _out_and_json(p, c)
        p.set_defaults(_run=c.run)
    return parser


# ---------------------------------------------------------------------------
# Stage commands: parse into settings, run the stage, print
# ---------------------------------------------------------------------------


def _configs(name: str, args: argparse.Namespace) -> tuple[DataConfig | str | None, Any]:
    """(what the stage reads, its settings) from the command line: the DataConfig, or for the
    report the CIFAKE source of its galleries. Messages name the flags; main() prefixes
    "cifake <command>: error:"."""
    s = stages.STAGES[name]
    dcfg = build(DataConfig, given(args, DataConfig), flag_names=True) if s.reads_data else None
    # The data stage has no settings class (classes[0] would fail); stage_config then gives None.
    cfg = stages.stage_config(name, given(args, s.classes[0]), dcfg, flag_names=True) if s.classes else None
    if not s.reads_data:  # the report: the source whose test images its galleries show
        return build(ReportData, given(args, ReportData), flag_names=True).data, cfg
    return dcfg, cfg


def _auc(m: dict) -> float:
    return float("nan") if m.get("roc_auc") is None else m["roc_auc"]


def _print_zeroshot(r, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"best_on_val": r.info["best"], "summary": r.info["rows"]}, indent=2, default=str))
        return
    for row in r.info["rows"]:
        mark = "  <- best on val" if row["prompt_set"] == r.info["best"] else ""
        print(f"{row['prompt_set']:>14}: test accuracy {row['accuracy']:.4f} (natural "
              f"{row['natural_accuracy']:.4f}), AUC {row['roc_auc'] or float('nan'):.4f}{mark}")
    print(f"zeroshot: {len(r.info['rows'])} prompt set(s) in {r.seconds:.0f}s -> {args.out}/summary.csv")


def _print_probe(r, args: argparse.Namespace) -> None:
    m = next(iter(r.metrics.values()))
    key = "alpha" if "alpha" in r.info else "C"
    if args.json:
        print(json.dumps({**m, **r.info}, indent=2, default=str))
    else:
        print(f"{m['detector']}: test accuracy {m['accuracy']:.4f}, AUC {_auc(m):.4f} "
              f"(threshold {m['threshold']:.3f}, {key} {r.info[key]:g}) -> {args.out}")


def _print_finetune(r, args: argparse.Namespace) -> None:
    o = r.info["outcome"]
    if not r.metrics:  # stopped by --stop-after, or not the main process of a multi-process run
        if r.status == "stopped" and r.info["main_process"]:
            print(f"finetune: stopped after step {o['step']}/{o['total_steps']} (--stop-after); continue with "
                  f"--resume -> {args.out}", file=sys.stderr)
        return
    m = next(iter(r.metrics.values()))
    if args.json:
        print(json.dumps({**{k: o[k] for k in ("status", "step", "total_steps", "best_step", "best_val_auc")},
                          "metrics": m}, indent=2, default=str))
    else:
        print(f"finetune:{r.info['train']}: test accuracy {m['accuracy']:.4f}, AUC {_auc(m):.4f} (threshold "
              f"{m['threshold']:.3f}, best step {o['best_step']}/{o['step']}, {o['status']}, "
              f"{o['images_per_second']:.0f} img/s) -> {args.out}")


def _print_cnn(r, args: argparse.Namespace) -> None:
    m = {**r.metrics["cnn"], **r.info}
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    else:
        print(f"cnn: test accuracy {m['accuracy']:.4f}, AUC {m['roc_auc']:.4f} "
              f"(threshold {m['threshold']:.3f}, best epoch {m['best_epoch']}/{m['epochs_run']}, "
              f"{m['train_seconds']:.0f}s) -> {args.out}")


def _print_evaluate(r, args: argparse.Namespace) -> None:
    m = next(iter(r.metrics.values()))
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    else:
        print(f"{m['detector']} on {m['split']}: accuracy {m['accuracy']:.4f}, AUC {_auc(m):.4f} "
              f"(threshold {m['threshold']:.3f}, n {m['n']}) -> {args.out}")


def _print_robustness(r, args: argparse.Namespace) -> None:
    from cifake_lib.analysis.robustness import RESULTS_CSV, markdown

    print(markdown(r.info["rows"]))
    print(f"robustness: {len(r.info['rows'])} rows on {r.info['n']} test images -> {args.out}/{RESULTS_CSV}")


def _print_data(r, args: argparse.Namespace) -> None:
    from cifake_lib.data.load import format_summary

    summary = r.info["summary"]
    print(json.dumps(summary) if args.json else format_summary(summary))


PRINTERS = {"data": _print_data, "zeroshot": _print_zeroshot, "probe": _print_probe, "finetune": _print_finetune,
            "cnn": _print_cnn, "evaluate": _print_evaluate, "robustness": _print_robustness,
            "report": lambda r, args: print(r.info["report"])}


def check_paths(cfg: Any) -> None:
    """A mistyped --model folder or --runs path fails here, in a second, before any folder is
    claimed, any data is loaded or any Hub lookup is tried."""
    from cifake_lib.core.network import check_local_folder

    if isinstance(getattr(cfg, "model", None), str):
        check_local_folder(cfg.model, "--model")
    for path in getattr(cfg, "runs", None) or []:
        if not os.path.exists(os.path.expanduser(path)):
            raise FileNotFoundError(f"--runs {path}: no such file or folder")


def _stage_runner(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        data, cfg = _configs(name, args)
        check_paths(cfg)
        out = getattr(args, "out", None)
        if out is None:
            r = stages.STAGES[name].run(data, cfg, None)
        else:  # the settings are checked first: a typo creates no folder
            _refuse_another_finished_run(name, out, data, cfg, args)
            with _claimed(out, args, name):
                r = stages.STAGES[name].run(data, cfg, out)
        PRINTERS[name](r, args)
        return 0

    return run


def _refuse_another_finished_run(name: str, out: str, data: Any, cfg: Any, args: argparse.Namespace) -> None:
    """A folder holding a finished run of other settings (another model, subset, method) is replaced
    only with --overwrite: its files would otherwise mix with the new run's; the same command again
    re-runs it."""
    from cifake_lib.core.outdir import finished_run_conflict
    from cifake_lib.core.results import settings_record

    if getattr(args, "overwrite", False) or name == "finetune":  # fine-tuning: its checkpoints' own rule
        return
    conflict = finished_run_conflict(out, settings_record(name, data if isinstance(data, DataConfig) else None,
                                                          cfg, out=out))
    if conflict:
        raise CliError(f"--out {out}: {conflict}; choose another --out, or pass --overwrite to replace it")


@contextmanager
def _claimed(out: str, args: argparse.Namespace, command: str) -> Iterator[None]:
    """The output-folder rule (core.outdir), then the folder's lock (core.lock) for the block."""
    folder = claim_output(out, overwrite=getattr(args, "overwrite", False))
    with study_lock(folder, f"cifake {command}"):
        yield


def _finetune(args: argparse.Namespace) -> int:
    try:
        return _stage_runner("finetune")(args)
    except RuntimeError as e:  # imported only now: a bad option fails before torch loads
        from cifake_lib.methods.finetune import OutOfMemory, TrainingDiverged

        if isinstance(e, OutOfMemory):  # the user's fix is a smaller --batch-size: a usage error, exit 2
            raise CliError(str(e)) from None
        if not isinstance(e, TrainingDiverged):
            raise
        print(f"cifake finetune: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------
# run, predict, tiny-model
# ---------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from cifake_lib.app.pipeline import check_study, print_plan, run_study, study_config

    opts = build(StudyOptions, given(args, StudyOptions), flag_names=True)
    overrides = given(args, RunConfig)
    if opts.print_plan:
        print(print_plan(preset=opts.preset, data=opts.data, config_file=opts.config, out=opts.out,
                         run_overrides=overrides), end="")
        return 0
    if opts.print_config:
        config = study_config(opts.preset, opts.config, run_overrides=overrides, data=opts.data, out=opts.out)
        print(to_toml(config, header=f"cifake run --preset {opts.preset}: every setting, checked. Save it and "
                      "pass it back with --config FILE (a setting left out takes its default)."), end="")
        return 0
    check_study(preset=opts.preset, data=opts.data, config_file=opts.config, out=opts.out,
                run_overrides=overrides)  # a bad setting creates no folder
    with _claimed(opts.out, args, "run"):
        record = run_study(preset=opts.preset, data=opts.data, config_file=opts.config, out=opts.out,
                           run_overrides=overrides)
    ran = sum(s["status"] == "ran" for s in record["steps"])
    impossible = sum(s["status"].startswith("skipped:") for s in record["steps"])
    print(f"study complete in {opts.out}: {ran} step(s) ran, {len(record['steps']) - ran - impossible} already "
          f"complete" + (f", {impossible} skipped (see runs.csv's reason column)" if impossible else "")
          + (f"; report: {report}" if os.path.isfile(report := os.path.join(opts.out, "report", "report.md"))
             else "; no report (the report stage did not run)"))
    return 0


def read_inputs(inputs: list[str], stdin=None) -> list[str]:
    """`-` among the inputs stands for the paths on stdin, one a line (blank lines skipped)."""
    out: list[str] = []
    for item in inputs:
        if item == "-":
            out += [line.rstrip("\r\n") for line in (stdin or sys.stdin) if line.strip()]
        else:
            out.append(item)
    return out


def _predict(args: argparse.Namespace) -> int:
    from cifake_lib.methods.evaluate import load_detector_or_fail
    from cifake_lib.methods.predict import predict_paths

    cfg = build(PredictConfig, given(args, PredictConfig), flag_names=True)
    check_paths(cfg)
    detector = load_detector_or_fail(cfg.model, cfg.device)
    failed = 0
    for record in predict_paths(detector, read_inputs(cfg.inputs), batch_size=cfg.batch_size):
        failed += "error" in record
        print(json.dumps(record), flush=True)
    if failed:
        print(f"cifake predict: {failed} input(s) could not be scored", file=sys.stderr)
    return 1 if failed else 0


def _push(args: argparse.Namespace) -> int:
    from cifake_lib.app.push import push

    cfg = build(PushConfig, given(args, PushConfig), flag_names=True)
    if not os.path.isdir(os.path.expanduser(cfg.model)):
        raise FileNotFoundError(f"--model {cfg.model}: no such folder (a run folder to push was meant)")
    result = push(cfg, note=lambda msg: print(msg, file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["url"] is None:
        print(f"dry run: {len(result['files'])} file(s) of {result['run']} would go to {cfg.repo}:")
        print("\n".join(f"  {f}" for f in result["files"]))
    else:
        print(f"pushed {result['run']} ({len(result['files'])} files) to {cfg.repo}: {result['url']}")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from cifake_lib.clip.tiny import SHAPES, write_tiny_model

    cfg = build(TinyModelConfig, given(args, TinyModelConfig), flag_names=True)
    if cfg.shape not in SHAPES[cfg.family]:
        raise CliError(f"--shape {cfg.shape} is not a {cfg.family} shape; choose from {', '.join(SHAPES[cfg.family])}")
    claim_output(cfg.out_dir, overwrite=args.overwrite, flag="OUT_DIR")
    print(write_tiny_model(cfg.out_dir, cfg.family, seed=cfg.seed, shape=cfg.shape))
    return 0


COMMANDS: list[Command] = [
    Command("run", "run the whole study: data, zero-shot, probe, fine-tune, CNN, evaluate, robustness, report; "
            "finished stages are skipped, interrupted ones resumed", (StudyOptions, RunConfig), _run, writes=True),
    Command("data", "load CIFAKE (decoding and caching it once), audit it and print a summary",
            stages.STAGES["data"].option_classes,
            _stage_runner("data"), json=True),
    Command("zeroshot", "zero-shot CLIP with text prompts: one run folder per prompt set, plus summary.csv",
            stages.STAGES["zeroshot"].option_classes, _stage_runner("zeroshot"), out=True, json=True),
    Command("probe", "linear probe (logistic regression, C chosen on validation) on frozen CLIP image features",
            stages.STAGES["probe"].option_classes, _stage_runner("probe"), out=True, json=True),
    Command("finetune", "fine-tune CLIP on CIFAKE (FLYP; CE over the averaged class prompts; CoOp; LoRA; CLIP-Adapter); "
            "checkpoints, resume, best model exported", stages.STAGES["finetune"].option_classes,
            _finetune, out=True, json=True),
    Command("cnn", "train the CIFAKE paper's CNN (Bird & Lotfi) as a reference detector",
            stages.STAGES["cnn"].option_classes, _stage_runner("cnn"), out=True, json=True),
    Command("evaluate", "score a saved detector on a CIFAKE split at its own threshold: metrics.json, "
            "predictions.csv", stages.STAGES["evaluate"].option_classes, _stage_runner("evaluate"),
            out=True, json=True),
    Command("robustness", "accuracy and AUC of every detector under JPEG, blur, noise, down/up-scaling and "
            "cropping at increasing severity", stages.STAGES["robustness"].option_classes,
            _stage_runner("robustness"), out=True),
    Command("report", "write report.md (comparison with published anchors, per-class, calibration, robustness, "
            "galleries, saliency, generated discussion) from run folders or a study folder",
            stages.STAGES["report"].option_classes, _stage_runner("report"), out=True),
    Command("predict", "p_fake for image files: one JSON line per image, in input order "
            "(exit 1 if any file failed)", (PredictConfig,), _predict),
    Command("push", "upload a detector's run folder (with its model card and, for a probe or zero-shot run, "
            "its local base model) to the Hugging Face Hub", (PushConfig,), _push, json=True),
    Command("tiny-model", "write a small randomly initialised CLIP, SigLIP or DINOv2 (offline, for tests and smoke runs)",
            (TinyModelConfig,), _tiny_model, writes=True),
]


def _quiet_broken_pipe() -> int:
    # The reader went away (`cifake run --print-config | head`): no traceback, and no second
    # error when Python flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


_WRITE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    # Library log lines (e.g. the CNN's epochs) go to stderr, so stdout stays the results alone;
    # other libraries keep their own level (warnings only).
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("cifake_lib").setLevel(logging.INFO)
    try:
        code = args._run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (CifakeError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"cifake {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write refused: read-only, permission, full disk -> one line naming the path
        if not (is_disk_full(e) or e.errno in _WRITE_ERRNOS):
            raise
        print(f"cifake {args.command}: error: {write_error(e.filename or '?', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cifake {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


__all__ = ["COMMANDS", "CliError", "build_parser", "check_paths", "main", "read_inputs"]

if __name__ == "__main__":
    sys.exit(main())
