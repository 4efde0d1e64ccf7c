"""`cifake evaluate` as a method: a saved detector scored on a split at its own threshold.

`run(data, cfg, out)` like every method: the detector is loaded first (a bad --model fails
before any data loads), then the split is scored and its metrics.json / predictions.csv written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifake_lib.core.errors import CifakeError
from cifake_lib.core.results import RunResult, settings_record
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.methods.config import EvaluateConfig

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData


def load_detector_or_fail(name: str, device: str | None) -> Any:
    """`methods.detectors.load_detector`, its failures as one CifakeError naming --model."""
    from cifake_lib.methods.detectors import load_detector

    try:
        return load_detector(name, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        msg = str(e)  # library errors usually start with the path already
        raise CifakeError(f"--model {msg}" if msg.startswith(name) else f"--model {name}: {msg}") from None


def _args(dcfg: DataConfig | None, cfg: EvaluateConfig, out: str | os.PathLike) -> dict[str, Any]:
    """The settings record, with the scored folder relative to `out` (a moved study still pairs
    each re-evaluation with the run it scored)."""
    from cifake_lib.core.paths import portable_path

    args = settings_record("evaluate", dcfg, cfg, out=out)
    return {**args, "model": portable_path(cfg.model, out)}


def run(data: DataConfig | CifakeData, cfg: EvaluateConfig, out: str | os.PathLike) -> RunResult:
    """Score `cfg.model` on the test (or validation) split at the detector's own threshold."""
    from cifake_lib.methods.predict import evaluate_detector

    t0 = time.perf_counter()
    cfg.check()
    if cfg.split == "val" and isinstance(data, DataConfig) and not 0 < data.val_fraction < 1:
        raise CifakeError(f"--split val needs --val-fraction in (0, 1), got {data.val_fraction}")
    detector = load_detector_or_fail(cfg.model, cfg.device)
    if isinstance(data, DataConfig):  # an external labelled set: methods.external reads and scores it
        from cifake_lib.methods.external import run_external_evaluate, wants_external

        if wants_external(data.data, cfg):
            m = run_external_evaluate(data, cfg, out, detector=detector, args=_args(data, cfg, out))
            return RunResult("evaluate", Path(out), runs=[Path(out)], metrics={m["detector"]: m},
                             seconds=time.perf_counter() - t0)
    cifake, dcfg = loaded(data)
    split = cifake.test if cfg.split == "test" else cifake.val
    if split is None:
        raise CifakeError("--split val: the data has no validation split (--val-fraction 0)")
    out = Path(out)
    args = _args(dcfg, cfg, out)
    m = evaluate_detector(detector, split, out, split_name=cfg.split, model=args["model"], data=cifake.source,
                          seed=dcfg.seed if dcfg else 0, batch_size=cfg.batch_size, n_boot=cfg.n_boot, args=args)
    return RunResult("evaluate", out, runs=[out], metrics={m["detector"]: m}, seconds=time.perf_counter() - t0)


__all__ = ["load_detector_or_fail", "run"]
