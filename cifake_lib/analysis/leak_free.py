"""The leak-free headline without the command line: what `cifake evaluate --dedup` gives, for runs
that a notebook made on its own.

The leak-free test split is the test split without the images whose pixels also occur in train
or validation (`data.load.drop_duplicates`, as `load_cifake(dedup=True)` drops them). A detector's
p_fake for an image does not depend on which other images are scored, so its leak-free scores are
its test predictions restricted to those images: `leak_free_evaluations` writes them, with their
metrics at the run's own threshold, as an evaluation folder that `load_study` pairs with the run
(metrics.json `args`: `dedup` true, `model` the run it scored), exactly as the evaluate stage's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifake_lib.core.files import write_json
from cifake_lib.core.paths import portable_path
from cifake_lib.data.load import drop_duplicates
from cifake_lib.evaluation.metrics import metrics_record, write_predictions
from cifake_lib.evaluation.runs import METRICS, PREDICTIONS, find_runs, read_run

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

EVALUATE_DIR = "evaluate"  # under the runs folder, as `cifake run` keeps its re-evaluations


def _scored_runs(runs_dir: Path) -> set[str]:
    """The run folders that already have a leak-free evaluation under `runs_dir`."""
    done = set()
    for folder in find_runs(runs_dir):
        m = read_run(folder, predictions=False)["metrics"]
        args = m.get("args") or {}
        if args.get("dedup") and m.get("split") == "test" and args.get("model"):
            done.add(str(Path(args["model"]).resolve()))
    return done


def _folder_name(run: Path, runs_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run.relative_to(runs_dir).as_posix()) or "run"


def leak_free_evaluation(run_dir: str | os.PathLike, data: CifakeData, out_dir: str | os.PathLike, *,
                         n_boot: int = 1000) -> dict[str, Any]:
    """One run's leak-free evaluation in `out_dir` (metrics.json, predictions.csv); its metrics.

    `data` must be the split the run was made on: its test predictions must all be test images
    of `data`, or a ValueError says so (a different subset would give a different test set).
    """
    run = read_run(run_dir)
    preds, m = run["predictions"], run["metrics"]
    if preds is None:
        raise ValueError(f"{run_dir}: no {PREDICTIONS} to restrict")
    test_ids = set(np.asarray(data.test.ids).tolist())
    if not set(preds["id"].tolist()) <= test_ids:
        raise ValueError(f"{run_dir}: its test images are not those of the data given (another subset or seed)")
    reference = [data.train] + ([data.val] if data.val is not None and len(data.val) else [])
    keep_ids = set(np.asarray(drop_duplicates(data.test, reference).ids).tolist())
    keep = np.isin(preds["id"], list(keep_ids))
    out = Path(out_dir)
    args = {"command": "evaluate", "dedup": True, "split": "test", "model": portable_path(str(run["path"]), out),
            "how": "the run's test predictions restricted to the leak-free test images"}
    record = metrics_record(preds["label"][keep], preds["p_fake"][keep], threshold=float(m["threshold"]),
                            classes=preds["cifar_class"][keep], detector=str(m["detector"]), model=args["model"],
                            data=str(m.get("data", data.source)), split="test", seed=int(m.get("seed", 0)),
                            n_boot=n_boot, threshold_source="detector", args=args)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).unlink(missing_ok=True)  # written last: its presence marks a complete folder
    write_predictions(out / PREDICTIONS, preds["id"][keep], preds["label"][keep], preds["cifar_class"][keep],
                      preds["p_fake"][keep])
    write_json(out / METRICS, record)
    return record


def leak_free_evaluations(runs_dir: str | os.PathLike, data: CifakeData, *, n_boot: int = 1000,
                          note: Callable[[str], Any] = print) -> list[Path]:
    """Give every run under `runs_dir` without one a leak-free evaluation, in `runs_dir/evaluate/<run>/`;
    returns the folders written. A run made on other data than `data` is left as it is, with a note."""
    runs_dir = Path(runs_dir)
    done = _scored_runs(runs_dir)
    written = []
    for folder in find_runs(runs_dir):
        if EVALUATE_DIR in folder.relative_to(runs_dir).parts or str(folder.resolve()) in done:
            continue
        out = runs_dir / EVALUATE_DIR / _folder_name(folder, runs_dir)
        try:
            leak_free_evaluation(folder, data, out, n_boot=n_boot)
        except ValueError as e:
            note(f"no leak-free evaluation for {folder}: {e}")
            continue
        written.append(out)
    return written


__all__ = ["EVALUATE_DIR", "leak_free_evaluation", "leak_free_evaluations"]
