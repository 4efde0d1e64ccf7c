"""A study's runs, read once: the leak-free headline, the runs with duplicates, the paired comparisons.

`load_study(paths)` searches every path recursively for run folders and sorts them:

- original runs (what zeroshot/probe/finetune/cnn wrote: test split as loaded);
- leak-free runs: the evaluate stage's re-scoring of a detector on the test split with every
  test image that also occurs in train or validation removed (`--dedup`; its metrics.json
  records the arguments, `args.dedup` true). Each is matched to its original run by the run
  folder it scored (`args.model`), else by detector name.

The headline is one run per selected detector (one zero-shot prompt set per CLIP model, chosen
on validation): its leak-free scores when there are some, else its original scores, marked.
`paired_comparisons` compares detectors on the same images (evaluation/stats.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib.analysis import compare
from cifake_lib.evaluation.runs import detector_kind
from cifake_lib.evaluation.scale import Scale, study_scale, with_study_models
from cifake_lib.evaluation.stats import compare_pair


def is_leak_free(run: Mapping[str, Any]) -> bool:
    """Whether a run was scored on the test split with train/validation duplicates removed."""
    m = run["metrics"]
    return bool(m.get("dedup") or (m.get("args") or {}).get("dedup")) and m.get("split") == "test"


def _resolved(path: Any) -> str:
    try:
        return str(Path(str(path)).expanduser().resolve())
    except OSError:
        return str(path)


def _match(leak_free: Mapping[str, Any], originals: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The original run a leak-free run re-scored: by folder (args.model), else by detector name."""
    scored = (leak_free["metrics"].get("args") or {}).get("model")
    if scored:
        for r in originals:
            if _resolved(r["path"]) == _resolved(scored):
                return r
    same = [r for r in originals if r["metrics"].get("detector") == leak_free["metrics"].get("detector")]
    return same[0] if len(same) == 1 else None


def _removed(original: Mapping[str, Any], leak_free: Mapping[str, Any]) -> dict[str, int]:
    """How many test images (and of which label) the leak-free scoring left out."""
    n = int(original["metrics"]["n"]) - int(leak_free["metrics"]["n"])
    po, pl = original.get("predictions"), leak_free.get("predictions")
    if po is None or pl is None:
        return {"n": n, "fake": int(original["metrics"]["n_fake"]) - int(leak_free["metrics"]["n_fake"]),
                "real": int(original["metrics"]["n_real"]) - int(leak_free["metrics"]["n_real"])}
    gone = ~np.isin(po["id"], pl["id"])
    return {"n": int(gone.sum()), "fake": int((po["label"][gone] == 1).sum()), "real": int((po["label"][gone] == 0).sum())}


@dataclass
class Study:
    """Everything the report and notebook 04 compute from run folders, computed once."""

    paths: list[str]
    runs: list[dict[str, Any]]  # headline: one per selected detector, leak-free where available
    with_duplicates: list[dict[str, Any]]  # the selected original runs (test split as loaded)
    notes: list[str] = field(default_factory=list)
    n_folders: int = 0
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {"n", "fake", "real"} removed
    scale: Scale = field(default_factory=Scale)  # a pipeline check (tiny random CLIP, a subset) or not

    @property
    def leak_free(self) -> bool:
        return bool(self.runs) and all(r.get("leak_free") for r in self.runs)


def load_study(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Study:
    """Read and sort every run folder under `paths` (see the module docstring)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found = compare.load_runs(paths)  # names are re-given below, per group
    if not found:
        raise FileNotFoundError(f"no run folders (with a test metrics.json) under {', '.join(map(str, paths))}")
    leak_free = [r for r in found if is_leak_free(r)]
    originals = compare.name_runs([r for r in found if not is_leak_free(r)])
    selected, notes = compare.select_runs(originals)
    matched: dict[int, dict[str, Any]] = {}
    unmatched = []
    for lf in leak_free:
        orig = _match(lf, originals)
        if orig is None:
            unmatched.append(lf)
        else:
            matched[id(orig)] = lf
    runs, removed = [], {}
    for r in selected:
        lf = matched.get(id(r))
        if lf is None:
            runs.append({**r, "leak_free": False})
            continue
        # Keep the original's folder, settings and validation predictions; take the scores of the
        # leak-free re-scoring.
        # The re-scoring names the run folder as its "model"; keep the original's model and
        # threshold source, which say what the detector is and where its threshold came from.
        metrics = {**lf["metrics"], "model": r["metrics"].get("model"),
                   "threshold_source": r["metrics"].get("threshold_source", lf["metrics"].get("threshold_source"))}
        runs.append({**r, "metrics": metrics, "metrics_original": r["metrics"],
                     "predictions": lf["predictions"], "leak_free": True, "leak_free_path": lf["path"]})
        removed[r["name"]] = _removed(r, lf)
    if unmatched:  # only evaluate folders given, or a detector whose original is absent
        extra = compare.name_runs(unmatched)
        extra, more_notes = compare.select_runs(extra)
        notes += more_notes
        runs += [{**r, "leak_free": True, "leak_free_path": r["path"]} for r in extra]
    with_dup = [r for r in selected if id(r) in matched]
    return Study(paths=[str(p) for p in paths], runs=runs, with_duplicates=with_dup, notes=notes,
                 n_folders=len(found), removed=removed,
                 scale=with_study_models(study_scale(found), _study_roots(paths)))


def _study_roots(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The study folders (holding study.json) that `paths` are in or under: a grid's whole scale."""
    roots: list[Path] = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        for folder in [path, *path.parents][:4]:
            if (folder / "study.json").is_file() and folder not in roots:
                roots.append(folder)
                break
    return roots


# --------------------------------------------------------------------------- paired comparisons

PAIRED_COLUMNS = ("detector_a", "detector_b", "metric", "difference", "ci_low", "ci_high", "p_value", "test",
                  "value_a", "value_b", "n", "why")


def _kind(run: Mapping[str, Any]) -> str:
    return detector_kind(run["metrics"].get("detector", ""))


def main_pairs(runs: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any], str]]:
    """(A, B, why) pairs: every detector vs the chosen zero-shot set; fine-tune vs probe; fine-tune vs
    CNN; every fine-tuning ablation vs the main fine-tune (finetune:both); best vs runner-up by
    validation AUC."""
    zs = [r for r in runs if _kind(r) == "zeroshot"]
    ft = [r for r in runs if _kind(r) == "finetune"]
    main_ft = next((r for r in ft if r["metrics"]["detector"] == "finetune:both"), ft[0] if ft else None)
    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any], str]] = []
    for z in zs[:1]:
        pairs += [(r, z, "vs the zero-shot prompt set chosen on validation") for r in runs if _kind(r) != "zeroshot"]
    if main_ft is not None:
        pairs += [(main_ft, r, f"fine-tune vs {_kind(r)}") for r in runs if _kind(r) in ("probe", "cnn")]
        pairs += [(r, main_ft, "ablation vs the main fine-tune") for r in ft if r is not main_ft]
    # Ranked on validation: the report's test numbers choose nothing, this pair included.
    ranked = sorted((r for r in runs if (r.get("metrics_val") or {}).get("roc_auc") is not None),
                    key=lambda r: r["metrics_val"]["roc_auc"], reverse=True)
    if len(ranked) > 1:
        a, b = ranked[0], ranked[1]
        if not any({id(x), id(y)} == {id(a), id(b)} for x, y, _ in pairs):
            pairs.append((a, b, "best vs runner-up by validation AUC"))
    return pairs


def aligned(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, p_a, p_b) on the images both runs scored, matched by id; None without predictions
    or when the labels of a shared id disagree."""
    pa, pb = a.get("predictions"), b.get("predictions")
    if pa is None or pb is None:
        return None
    pos = {i: k for k, i in enumerate(pb["id"])}
    ia = np.array([k for k, i in enumerate(pa["id"]) if i in pos], dtype=np.int64)
    if len(ia) == 0:
        return None
    ib = np.array([pos[i] for i in pa["id"][ia]], dtype=np.int64)
    if not np.array_equal(pa["label"][ia], pb["label"][ib]):
        return None
    return pa["label"][ia], pa["p_fake"][ia], pb["p_fake"][ib]


def paired_comparisons(runs: Sequence[Mapping[str, Any]], *, n_boot: int = 2000,
                       seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """paired_comparisons.csv rows (PAIRED_COLUMNS) for `main_pairs`, and notes on pairs skipped."""
    rows, notes = [], []
    for a, b, why in main_pairs(runs):
        data = aligned(a, b)
        if data is None:
            notes.append(f"{a['name']} vs {b['name']}: no common test images with predictions; not compared")
            continue
        y, pa, pb = data
        if len(y) < len(a["predictions"]["label"]) or len(y) < len(b["predictions"]["label"]):
            notes.append(f"{a['name']} vs {b['name']}: compared on the {len(y):,} test images both scored")
        for row in compare_pair(y, pa, pb, threshold_a=float(a["metrics"]["threshold"]),
                                threshold_b=float(b["metrics"]["threshold"]), n_boot=n_boot, seed=seed):
            rows.append({"detector_a": a["name"], "detector_b": b["name"], **row, "why": why})
    return rows, notes


def significant(row: Mapping[str, Any], alpha: float = 0.05) -> bool | None:
    """A difference this table calls real: interval excludes 0 AND the test's p < alpha (None: no data)."""
    if row.get("ci_low") is None or row.get("p_value") is None:
        return None
    return bool((row["ci_low"] > 0 or row["ci_high"] < 0) and row["p_value"] < alpha)


__all__ = ["Study", "load_study", "is_leak_free", "main_pairs", "aligned", "paired_comparisons", "significant",
           "PAIRED_COLUMNS"]
