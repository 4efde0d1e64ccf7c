"""`cifake report` as a stage: report.md from run folders or a whole study folder.

With a study folder the runs come from its index (OUT/runs.csv, `evaluation.study`): the main
cell's detectors and their leak-free re-evaluations for the headline, every seed of the main
(model, training-set size) for seeds.csv, and, for each grid axis with more than one value, a
table and a figure along it (`analysis.grid`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cifake_lib.analysis.config import ReportConfig
from cifake_lib.core.results import RunResult
from cifake_lib.data.config import DataConfig
from cifake_lib.evaluation.study import read_index, read_study


def study_inputs(runs: list[str]) -> tuple[list[str], list[tuple[Path, str]], list[tuple[Path, list[dict[str, str]]]]]:
    """(folders to report on, [(seed-run folder, its method)], [(study folder, its index rows)]) of `runs`.

    A study folder gives its main cell's detectors, their re-evaluations and its robustness
    results as its study.json "layout" records them (made from the index); any other folder is
    reported as it is.
    """
    folders: list[str] = []
    seed_runs: list[tuple[Path, str]] = []
    grids: list[tuple[Path, list[dict[str, str]]]] = []
    for run in runs:
        layout = (read_study(run) or {}).get("layout")
        if not layout:
            folders.append(run)
            continue
        root = Path(run)
        index = read_index(root)
        method = {r["run_dir"]: r["method"] for r in index}
        folders += [str(root / d) for d in layout["report_runs"]]
        seed_runs += [(root / d, method.get(d, Path(d).name)) for d in layout.get("seed_runs", [])
                      if (root / d / "metrics.json").is_file()]
        grids.append((root, index))
    return folders, seed_runs, grids


def run(data: str | DataConfig | None, cfg: ReportConfig, out: str | os.PathLike) -> RunResult:
    """report.md from run folders or a study folder; with a study, OUT/seeds.csv first.

    data: the CIFAKE source whose test images the galleries show (None: no galleries).
    """
    from cifake_lib.analysis.report import build_report
    from cifake_lib.analysis.seeds import SEEDS_CSV, write_seed_table

    t0 = time.perf_counter()
    cfg.check()
    source = data.data if isinstance(data, DataConfig) else data
    folders, seed_runs, grids = study_inputs(cfg.runs)
    if seed_runs:
        write_seed_table([d for d, _ in seed_runs], Path(out) / SEEDS_CSV, names=[m for _, m in seed_runs])
    path = build_report(folders, out, data=source, n_boot=cfg.n_boot, gallery_k=cfg.gallery,
                        saliency=cfg.saliency, device=cfg.device, embeddings=cfg.embeddings > 0,
                        embedding_limit=cfg.embeddings, study_roots=[root for root, _ in grids])
    return RunResult("report", Path(out), seconds=time.perf_counter() - t0, info={"report": str(path)})


__all__ = ["run", "study_inputs"]
