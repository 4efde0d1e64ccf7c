"""`cifake run`: the whole study in one command, as a sequence of `cifake` subcommands.

Each stage is the subcommand a user would type, with options from a TOML config (a preset,
overridden by `--config`), writing into its own folder under OUT. A stage whose outputs are
complete is skipped; a fine-tuning stage with checkpoints but no final metrics is resumed. So
re-running after a crash or a Colab disconnect continues where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cifake_lib.core.files import default_data_source, write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = ("report", "smoke")
STAGES = ("data", "zeroshot", "probe", "finetune", "cnn", "evaluate", "robustness", "report")
DATA_KEYS = ("data", "subset", "val_fraction", "seed", "dedup", "skip_bad")
# Keys of a stage table that configure the pipeline rather than the subcommand.
PIPELINE_KEYS = {"finetune": {"ablations"}}
NOTEBOOKS = ("01_data", "02_zero_shot", "03_fine_tune", "04_analysis")
TINY_MODEL = "tiny"
BEST_ZEROSHOT = "@best"  # placeholder for the zero-shot prompt set chosen on validation

GET_CIFAKE = (
    "Get CIFAKE from Kaggle (birdy654/cifake-real-and-ai-generated-synthetic-images) or the "
    "authors' GitHub repository (jordan-bird/CIFAKE-Real-and-AI-Generated-Synthetic-Images), "
    "unpack it, and pass the folder (or the .zip/.tar.gz) with --data, or set CIFAKE_DATA."
)


class PipelineError(ValueError):
    """A configuration or stage failure, with a message for the user."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def load_config(preset: str = "report", config_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The preset's TOML, with the tables of `config_file` merged over it key by key."""
    if preset not in PRESETS:
        raise PipelineError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    text = resources.files("cifake_lib.app").joinpath("presets", f"{preset}.toml").read_text(encoding="utf-8")
    config = tomllib.loads(text)
    if config_file:
        path = Path(config_file)
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PipelineError(f"--config {path}: file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise PipelineError(f"--config {path}: not valid TOML ({e})") from None
        for table, values in user.items():
            if table not in config:
                raise PipelineError(f"--config {path}: unknown table [{table}]; known: {', '.join(config)}")
            if not isinstance(values, dict):
                raise PipelineError(f"--config {path}: [{table}] must be a table")
            config[table].update(values)
    unknown = [s for s in config["run"]["stages"] if s not in STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown} in [run] stages; known: {', '.join(STAGES)}")
    return config


def to_argv(options: dict[str, Any]) -> list[str]:
    """{"batch_size": 128, "dedup": True, "train": ["text", "image"]} -> CLI options."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------


@dataclass
class Step:
    """One subcommand call: which stage it belongs to, where it writes, when it is done."""

    stage: str
    name: str
    argv: list[str]
    out: Path
    done_file: str  # relative to `out`; its presence means the step finished
    resume_argv: list[str] = field(default_factory=list)  # added when the step is partial
    capture: str | None = None  # file to write the command's stdout to

    def is_done(self) -> bool:
        return (self.out / self.done_file).is_file()

    def is_partial(self) -> bool:
        return bool(self.resume_argv) and (self.out / "checkpoints").is_dir() and any((self.out / "checkpoints").iterdir())


def plan(config: dict[str, Any], out: Path, data: str, model: str) -> list[Step]:
    """The steps of the study in order. Evaluate/robustness/report see the detectors planned before them."""
    d = dict(config.get("data", {}))
    d["data"] = data
    data_argv = to_argv({k: d.get(k) for k in DATA_KEYS})
    stages = config["run"]["stages"]
    steps: list[Step] = []
    detectors: list[Path] = []

    def opts(stage: str) -> dict[str, Any]:
        skip = PIPELINE_KEYS.get(stage, set())
        return {k: v for k, v in config.get(stage, {}).items() if k not in skip}

    if "data" in stages:
        steps.append(Step("data", "data", ["data", *data_argv, "--json"],
                          out / "data", "summary.json", capture="summary.json"))
    if "zeroshot" in stages:
        o = out / "zeroshot"
        steps.append(Step("zeroshot", "zeroshot", ["zeroshot", "--model", model, *data_argv,
                          *to_argv(opts("zeroshot")), "--out", str(o)], o, "summary.csv"))
        detectors.append(o / BEST_ZEROSHOT)  # resolved when the step runs: the best set by validation
    if "probe" in stages:
        o = out / "probe"
        steps.append(Step("probe", "probe", ["probe", "--model", model, *data_argv, *to_argv(opts("probe")),
                          "--out", str(o)], o, "metrics.json"))
        detectors.append(o)
    if "finetune" in stages:
        ft = opts("finetune")
        runs = [("finetune", ft)]
        for part in config.get("finetune", {}).get("ablations", []):
            runs.append((f"finetune_{part}", {**ft, "train": part}))
        for name, options in runs:
            o = out / name
            steps.append(Step("finetune", name, ["finetune", "--model", model, *data_argv, *to_argv(options),
                              "--out", str(o)], o, "metrics.json", resume_argv=["--resume"]))
            detectors.append(o)
    if "cnn" in stages:
        o = out / "cnn"
        steps.append(Step("cnn", "cnn", ["cnn", *data_argv, *to_argv(opts("cnn")), "--out", str(o)],
                          o, "metrics.json"))
        detectors.append(o)
    if "evaluate" in stages:
        for det in detectors:
            name = det.parent.name if det.name == BEST_ZEROSHOT else det.name
            o = out / "evaluate" / name
            steps.append(Step("evaluate", f"evaluate:{name}",
                              ["evaluate", "--model", str(det), *data_argv, *to_argv(opts("evaluate")),
                               "--split", "test", "--out", str(o)], o, "metrics.json"))
    if "robustness" in stages:
        o = out / "robustness"
        steps.append(Step("robustness", "robustness", ["robustness", "--runs", *map(str, detectors),
                          *data_argv, *to_argv(opts("robustness")), "--out", str(o)], o, "robustness.csv"))
    if "report" in stages:
        o = out / "report"
        runs = [str(d.parent if d.name == BEST_ZEROSHOT else d) for d in detectors]
        if "robustness" in stages:
            runs.append(str(out / "robustness"))
        steps.append(Step("report", "report", ["report", "--runs", *runs, "--data", data,
                          *to_argv(opts("report")), "--out", str(o)], o, "report.md"))
    return steps


def best_zeroshot(folder: Path) -> Path:
    """The zero-shot prompt set with the highest validation ROC-AUC (never chosen on test)."""
    best, best_auc = None, -1.0
    for metrics_val in sorted(folder.glob("*/metrics_val.json")):
        auc = json.loads(metrics_val.read_text()).get("roc_auc")
        if auc is not None and auc > best_auc:
            best, best_auc = metrics_val.parent, auc
    if best is None:
        raise PipelineError(f"{folder}: no zero-shot prompt set with validation metrics")
    return best


def _resolve(argv: list[str]) -> list[str]:
    return [str(best_zeroshot(Path(a).parent)) if a.endswith(BEST_ZEROSHOT) else a for a in argv]


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def check_steps(steps: list[Step]) -> None:
    """Parse every step's arguments before anything runs, so a config typo fails at once."""
    from cifake_lib.app.cli import build_parser

    parser = build_parser()
    for step in steps:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(step.argv + step.resume_argv)
        except SystemExit:
            msg = err.getvalue().strip().splitlines()
            raise PipelineError(
                f"stage {step.name}: the config gives options that `cifake {step.argv[0]}` does not take: "
                f"{msg[-1] if msg else step.argv}"
            ) from None


def resolve_data(data: str | None, preset: str) -> str:
    """The data source; the smoke preset insists on local data so it never waits on a network."""
    source = data or default_data_source()
    if preset == "smoke" and not Path(source).expanduser().exists():
        if source.split(":")[0] in {"hf", "kaggle", "github"}:
            raise PipelineError(f"the smoke preset runs offline and needs local CIFAKE data, got {source!r}. {GET_CIFAKE}")
        raise PipelineError(f"--data {source}: no such file or folder. {GET_CIFAKE}")
    return source


def run_study(
    *,
    preset: str = "report",
    data: str | None = None,
    config_file: str | os.PathLike | None = None,
    out: str | os.PathLike = "study",
    notebooks: bool = False,
    log=None,
) -> dict[str, Any]:
    """Run (or continue) the study; returns {"out", "steps": [{name, status, seconds}], ...}."""
    from cifake_lib.app.cli import main as cli_main

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    config = load_config(preset, config_file)
    source = resolve_data(data or config.get("data", {}).get("data"), preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = str(config["run"]["model"])
    if model == TINY_MODEL:
        model = str(_tiny_model(out / "tiny_model", seed=int(config.get("data", {}).get("seed", 0))))
    steps = plan(config, out, source, model)
    check_steps(steps)
    write_json(out / "config.json", {"preset": preset, "config_file": str(config_file) if config_file else None,
                                     "data": source, "model": model, "config": config})

    record: dict[str, Any] = {"out": str(out), "preset": preset, "data": source, "steps": []}
    for i, step in enumerate(steps, 1):
        label = f"[{i}/{len(steps)}] {step.name}"
        if step.is_done():
            log(f"{label}: complete, skipped")
            record["steps"].append({"name": step.name, "status": "skipped", "seconds": 0.0})
            continue
        argv = _resolve(step.argv)
        if step.is_partial():
            argv += step.resume_argv
            log(f"{label}: resuming from its checkpoints")
        log(f"{label}: cifake {' '.join(argv)}")
        start = time.perf_counter()
        code = _call(cli_main, argv, step.out / step.capture if step.capture else None)
        seconds = time.perf_counter() - start
        if code != 0:
            record["steps"].append({"name": step.name, "status": "failed", "seconds": seconds})
            write_json(out / "pipeline.json", record)
            raise PipelineError(
                f"stage {step.name} failed (exit status {code}); fix the cause and run the same command "
                "again: finished stages are skipped and fine-tuning resumes from its checkpoints"
            )
        if not step.is_done():  # e.g. fine-tuning with stop_after: a deliberate pause
            log(f"{label}: stopped before finishing; run the same command again to continue")
            record["steps"].append({"name": step.name, "status": "stopped", "seconds": round(seconds, 2)})
            record["stopped_at"] = step.name
            break
        log(f"{label}: done in {seconds:.1f} s")
        record["steps"].append({"name": step.name, "status": "ran", "seconds": round(seconds, 2)})
        write_json(out / "pipeline.json", record)
    if notebooks:
        record["notebooks"] = run_notebooks(out / "notebooks", data=source, smoke=preset == "smoke", log=log)
    write_json(out / "pipeline.json", record)
    return record


def _call(cli_main, argv: list[str], capture: Path | None) -> int:
    if capture is None:
        return cli_main(argv)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(argv)
    if code == 0:
        from cifake_lib.core.files import write_text_atomic

        write_text_atomic(capture, buf.getvalue())
    return code


def _tiny_model(folder: Path, seed: int) -> Path:
    from cifake_lib.clip.models import write_tiny_clip

    if not (folder / "config.json").is_file():
        write_tiny_clip(folder, seed=seed)
    return folder


def execute_notebook(path: Path, workdir: Path, env: dict[str, str], *, timeout: int = 3600):
    """Execute one notebook with nbclient, cwd = `workdir`, the kernel seeing `env`.

    Returns the notebook with its outputs; on failure the exception carries the partial notebook
    in `.notebook`, since its outputs show where it stopped.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise PipelineError("running notebooks needs nbclient and ipykernel: pip install -e '.[dev]'") from None
    nb = nbformat.read(path, as_version=4)
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", **env}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    except Exception as e:
        e.notebook = nb
        raise
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def run_notebooks(folder: Path, *, data: str, smoke: bool, log=print, timeout: int = 3600) -> list[dict]:
    """Execute the four notebooks headless with the run's settings; save executed copies in `folder`."""
    import nbformat

    source_dir = Path(__file__).resolve().parent.parent / "notebooks"
    if not source_dir.is_dir():
        raise PipelineError(f"{source_dir}: the notebooks are not here (run from a checkout of the repository)")
    folder.mkdir(parents=True, exist_ok=True)
    env = {"CIFAKE_DATA": data, "CIFAKE_SMOKE": "1" if smoke else "0", "CIFAKE_RUNS": str(folder / "runs")}
    results = []
    for name in NOTEBOOKS:
        log(f"notebook {name}: running")
        start = time.perf_counter()
        try:
            nb = execute_notebook(source_dir / f"{name}.ipynb", folder, env, timeout=timeout)
            status = "ran"
        except PipelineError:
            raise
        except Exception as e:
            nb, status = getattr(e, "notebook", None), f"failed: {type(e).__name__}"
        if nb is not None:
            nbformat.write(nb, folder / f"{name}.ipynb")
        results.append({"name": name, "status": status, "seconds": round(time.perf_counter() - start, 1)})
        log(f"notebook {name}: {status}")
        if status != "ran":
            raise PipelineError(f"notebook {name} failed; its executed copy is {folder / (name + '.ipynb')}")
    return results
