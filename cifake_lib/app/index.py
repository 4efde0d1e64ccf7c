"""The study grid's index, OUT/runs.csv: one row per run of the plan, rewritten as runs finish.

A row is the run's key (method, model, train_size, seed), its stage and folder, its status
(complete, partial, planned, stopped, failed), its seconds (run.json), its headline test
metrics, those of its leak-free re-evaluation, what it cost (trainable and total parameters,
peak memory, training seconds and rate), and the `cifake ...` command that reproduces it alone. Torch-free: `cifake run --print-plan` lists the same rows without running anything.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cifake_lib.core.files import write_csv
from cifake_lib.evaluation.study import COST_COLUMNS, INDEX, INDEX_COLUMNS, SKIPPED


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _headline(folder: Path) -> dict[str, Any]:
    """accuracy and ROC AUC of a run folder's test metrics.json; for a zero-shot folder, those of
    the prompt set its summary.csv marks as best on validation."""
    summary = folder / "summary.csv"
    if summary.is_file():
        with summary.open(newline="", encoding="utf-8") as f:
            best = [r for r in csv.DictReader(f) if str(r.get("best_on_val")).lower() in ("true", "1")]
        return {k: float(best[0][k]) if best and best[0].get(k) else None for k in ("accuracy", "roc_auc")}
    m = _json(folder / "metrics.json")
    return {"accuracy": m.get("accuracy"), "roc_auc": m.get("roc_auc")}


def _cost(folder: Path) -> dict[str, Any]:
    """The run's cost fields (metrics.json "cost"; for zero-shot, those its prompt sets share)."""
    files = [folder / "metrics.json"] + sorted(folder.glob("*/metrics.json"))
    cost = next((c for f in files if isinstance(c := _json(f).get("cost"), dict)), {})
    return {k: cost.get(k) for k in COST_COLUMNS}


def _seconds(folder: Path) -> float | None:
    files = [folder / "run.json"] + sorted(folder.glob("*/run.json"))  # zero-shot: one per prompt set
    values = [float(_json(f).get("seconds") or 0.0) for f in files if f.is_file()]
    return max(values) if values else None


def status_of(step: Any, session: Mapping[str, str]) -> str:
    """complete / partial (checkpoints, to resume) / planned / skipped (the backbone cannot make it),
    or what this session's attempt ended as."""
    if getattr(step, "skip", None):
        return SKIPPED
    if session.get(step.name) in ("failed", "stopped"):
        return session[step.name]
    if step.is_done():
        return "complete"
    return "partial" if step.is_partial() else "planned"


def index_rows(steps: Sequence[Any], out: Path, session: Mapping[str, str] | None = None,
               *, metrics: bool = True) -> list[dict[str, Any]]:
    """One row per run step of the plan (the steps with a key), in plan order."""
    session = session or {}
    evaluated = {s.evaluates: s for s in steps if s.stage == "evaluate" and s.evaluates is not None}
    rows = []
    for s in (s for s in steps if s.key is not None):
        status = status_of(s, session)
        ev = evaluated.get(s.out)
        row: dict[str, Any] = {**s.key.row(), "stage": s.stage, "run_dir": os.path.relpath(s.out, out),
                               "status": status, "reason": getattr(s, "skip", None) or "",
                               "command": "" if status == SKIPPED else command_line(s.argv),
                               "evaluated_dir": os.path.relpath(ev.out, out) if ev is not None else ""}
        if metrics and status == "complete":
            row.update(seconds=_seconds(s.out), **_headline(s.out), **_cost(s.out))
            if ev is not None and ev.is_done():
                lf = _json(ev.out / "metrics.json")
                row.update(leak_free_accuracy=lf.get("accuracy"), leak_free_roc_auc=lf.get("roc_auc"))
        rows.append(row)
    return rows


def write_index(steps: Sequence[Any], out: Path, session: Mapping[str, str] | None = None) -> Path:
    """OUT/runs.csv, atomically; left untouched when nothing in it changed (a study read, not run)."""
    return write_csv(Path(out) / INDEX, index_rows(steps, out, session), INDEX_COLUMNS, if_changed=True)


def command_line(argv: Sequence[str]) -> str:
    """The one `cifake ...` command that makes a run, quoted for a POSIX shell (paths with spaces,
    as Colab's "My Drive", paste and run as they are)."""
    return "cifake " + shlex.join(argv)


def plan_text(steps: Sequence[Any], out: Path) -> str:
    """`--print-plan`: every run's key, status and command, then the other steps, as TSV."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["method", "model", "train_size", "seed", "image_size", "status", "run_dir", "command"])
    for r in index_rows(steps, out, metrics=False):
        w.writerow([r["method"], r["model"], r["train_size"], r["seed"], r["image_size"],
                    r["status"] + (f" ({r['reason']})" if r["reason"] else ""), r["run_dir"], r["command"]])
    for s in (s for s in steps if s.key is None):
        w.writerow([s.name, "", "", "", "", "complete" if s.is_done() else "planned", os.path.relpath(s.out, out),
                    command_line(s.argv)])
    return buf.getvalue()


__all__ = ["command_line", "index_rows", "plan_text", "status_of", "write_index"]
