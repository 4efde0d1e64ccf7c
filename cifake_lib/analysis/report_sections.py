"""report.md's sections that describe the study itself, each generated from what ran.

    parts = seed_sections(run_dirs, study)   # {"related", "pipeline", "algorithm", "resources", "future"}

- Related Works: every entry of published.toml (results on CIFAKE and related work), cited;
- Pipeline: a figure drawn here (data -> detectors -> evaluation) with the grid's axes as they
  ran (method, model, resolution, training-set size, seed, test set);
- Algorithm: one FLYP step as pseudo-code, with the settings of the fine-tune run that ran
  (its finetune_config.json, else its run.json arguments);
- Computer resources: the device and the wall time of every run (the study's runs.csv when
  there is one, else each run folder's run.json `seconds`);
- Future Direction: what the grid leaves open and what the cross-dataset table suggests.

`with_study_sections(sections, run_dirs, study)` puts them, the learning curves and the
cross-dataset table among report.py's sections (the one hook build_report calls).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cifake_lib.analysis.compare import markdown_table
from cifake_lib.analysis.parts import Section
from cifake_lib.core.files import read_json
from cifake_lib.evaluation.runs import detector_kind

__all__ = ["Section", "with_study_sections", "algorithm_part", "future_part", "grid_axes", "pipeline_figure", "pipeline_part",
           "related_works_part", "resources_part", "resource_rows", "seed_sections"]

RUNS_CSV = "runs.csv"


# --------------------------------------------------------------------------- related works

def related_works_part() -> Section:
    """Every published.toml entry in one sentence, cited (the full references are in References)."""
    from cifake_lib.evaluation.published import (
        absence_claim,
        cite,
        published_results,
        related_works,
    )

    s = Section("Related Works")
    lines = []
    for e in published_results():
        what = {"accuracy": "accuracy", "roc_auc": "ROC AUC"}[e["metric"]]
        lines.append(f"- {cite(e)} ({e['title']}): {e['name']}, {e['setting']} — {e['model']}; {what} "
                     f"{e['text']} on {e['split']}.")
    lines += [f"- {cite(e)} ({e['title']}): {e['what']}." for e in related_works()]
    s.add("\n".join(dict.fromkeys(lines)) + "\n", absence_claim(related=False) + "\n")
    return s


# --------------------------------------------------------------------------- the grid

def _runs_csv(paths: Sequence[str | os.PathLike]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for p in paths:
        f = Path(p) / RUNS_CSV
        if f.is_file():
            with open(f, newline="", encoding="utf-8") as fh:
                rows += [{**r, "_root": str(Path(p))} for r in csv.DictReader(fh)]
    return rows


def _values(items: Iterable[Any]) -> list[str]:
    """Distinct values, numbers in numeric order, then words ("all" after the sizes)."""
    def key(v: str) -> tuple[int, float, str]:
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return sorted({str(v) for v in items if v not in (None, "")}, key=key)


def _resolutions(sizes: Sequence[Any]) -> list[str]:
    """The input sizes that ran (runs.csv's image_size; blank: the model's own)."""
    own = "the model's own input (CIFAKE: 32 px)"
    chosen = [f"{v} px" for v in _values([s for s in sizes if s not in (None, "")])]
    return chosen + ([own] if any(s in (None, "") for s in sizes) or not chosen else [])


def grid_axes(study: Any, paths: Sequence[str | os.PathLike], external_sets: Sequence[str] = ()) -> dict[str, list[str]]:
    """The grid's axes as they ran: {axis: [values]} from runs.csv, else from the runs themselves."""
    table = _runs_csv(paths)
    runs = study.runs if study is not None else []
    args = [((r.get("run") or {}).get("args") or {}) for r in runs]
    axes = {
        "method": _values([t.get("method") for t in table] or [r["metrics"].get("detector") for r in runs]),
        "model": _values([t.get("model") for t in table] or [r["metrics"].get("model") for r in runs]),
        "resolution": _resolutions([t.get("image_size") for t in table] or [a.get("image_size") for a in args]),
        # Zero-shot trains on nothing: its rows say nothing about the training-set size.
        "train size": _values([t.get("train_size") or "all" for t in table
                               if not str(t.get("method", "")).startswith("zeroshot")]
                              or [a.get("train_size") or "all" for a, r in zip(args, runs, strict=True)
                                  if detector_kind(r["metrics"].get("detector", "")) != "zeroshot"]),
        "seed": _values([t.get("seed") for t in table] or [r["metrics"].get("seed") for r in runs]),
        "test set": ["CIFAKE test" + (" (leak-free)" if study is not None and study.leak_free else ""),
                     *external_sets],
    }
    return {k: v for k, v in axes.items() if v}


def _box(ax: Any, x: float, y: float, w: float, h: float, title: str, lines: Sequence[str], color: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01", fc=color, ec="0.3", lw=1))
    ax.text(x + w / 2, y + h - 0.05, title, ha="center", va="top", fontsize=11, weight="bold")
    ax.text(x + w / 2, y + h - 0.14, "\n".join(lines), ha="center", va="top", fontsize=8, linespacing=1.4)


def _short(values: Sequence[str], k: int = 4) -> str:
    return ", ".join(values[:k]) + (f", +{len(values) - k}" if len(values) > k else "")


def pipeline_figure(axes: Mapping[str, Sequence[str]]) -> Figure:
    """Data -> detectors -> evaluation, three boxes with arrows, the grid's axes listed below."""
    fig = Figure(figsize=(10, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    kinds = _values(detector_kind(m) for m in axes.get("method", []))
    tests = list(axes.get("test set", ["CIFAKE test"]))
    sizes = [v for v in axes.get("train size", []) if v != "all"]
    data_lines = ["CIFAKE train -> validation split", "(twins of train images dropped)",
                  *(["-> nested train subsets"] if sizes else []), f"{tests[0]}",
                  *([f"external: {_short(tests[1:], 2)}"] if len(tests) > 1 else [])]
    _box(ax, 0.02, 0.5, 0.27, 0.45, "Data", data_lines, "#dbe9f6")
    _box(ax, 0.365, 0.5, 0.27, 0.45, "Detectors", [f"kinds: {_short(kinds)}",
                                                    f"models: {_short(axes.get('model', []), 2)}",
                                                    "threshold, prompt set, C, early stop:", "chosen on validation"],
         "#fde8cf")
    along = [name for name, ran in (("learning curves", len(axes.get("train size", [])) > 1),
                                    ("cross-dataset", len(tests) > 1)) if ran]
    _box(ax, 0.71, 0.5, 0.27, 0.45, "Evaluation", ["ROC AUC, accuracy, ECE, Brier", "bootstrap 95% CIs",
                                                    "paired: bootstrap, McNemar, DeLong",
                                                    *([", ".join(along)] if along else [])], "#dcefd9")
    for x0, x1 in ((0.29, 0.365), (0.635, 0.71)):
        ax.annotate("", xy=(x1, 0.72), xytext=(x0, 0.72), arrowprops={"arrowstyle": "-|>", "lw": 1.5})
    grid = [f"{k}: {_short(list(v), 5)}" for k, v in axes.items()]
    half = (len(grid) + 1) // 2
    ax.text(0.02, 0.42, "grid axes as run", ha="left", va="top", fontsize=9, weight="bold")
    for col, chunk in ((0.02, grid[:half]), (0.5, grid[half:])):
        ax.text(col, 0.34, "\n".join(chunk), ha="left", va="top", fontsize=8, family="monospace", linespacing=1.5)
    fig.suptitle("The study's pipeline")
    return fig


def duplicates_note(paths: Sequence[str | os.PathLike]) -> str:
    """What the study's data stage counted (OUT/data/summary.json), as a sentence; "" without one."""
    from cifake_lib.core.files import read_json

    for p in paths:
        summary = Path(p) / "data" / "summary.json"
        if summary.is_file():
            d = (read_json(summary) or {}).get("duplicates") or {}
            return (f"Exact duplicates in the data as loaded: {d.get('dropped_val', 0):,} validation image(s) with a "
                    f"pixel-identical twin in train were dropped before anything was tuned on validation; "
                    f"{d.get('train_test', 0):,} identical pair(s) across train and test, whose test copies the "
                    f"leak-free headline removes, and {d.get('within_test', 0):,} within test.\n")
    return ""


def pipeline_part(study: Any, paths: Sequence[str | os.PathLike], external_sets: Sequence[str] = ()) -> Section:
    s = Section("Pipeline")
    axes = grid_axes(study, paths, external_sets)
    s.image(pipeline_figure(axes), "pipeline.png", "Pipeline: data, detectors, evaluation, and the grid's axes")
    s.add("Grid axes as run: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in axes.items()) + ".\n")
    note = duplicates_note(paths)
    if note:
        s.add(note)
    return s


# --------------------------------------------------------------------------- algorithm

ALGO_KEYS = ("model", "train", "prompts", "loss", "epochs", "max_steps", "batch_size", "grad_accum", "lr",
             "min_lr_ratio", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "freeze_logit_scale",
             "lp_ft", "flip", "jpeg_prob", "blur_prob", "mixed_precision", "eval_every", "patience", "seed", "wise_ft")


def _finetune_settings(runs: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    found = []
    for r in runs:
        if detector_kind(r["metrics"].get("detector", "")) != "finetune":
            continue
        folder = Path(r["path"])
        cfg = read_json(folder / "finetune_config.json") if (folder / "finetune_config.json").is_file() else None
        settings = cfg if isinstance(cfg, dict) else ((r.get("run") or {}).get("args") or {})
        found.append((r["name"], settings))
    # The FLYP run itself when there is one (ablations may use another loss).
    return next((f for f in found if f[1].get("loss", "flyp") == "flyp"), found[0] if found else None)


def _warmup(cfg: Mapping[str, Any]) -> str:
    steps = cfg.get("warmup_steps")
    return f"{steps} linear warm-up steps" if steps is not None else "the default linear warm-up"


def _when_validated(cfg: Mapping[str, Any]) -> str:
    """When the loop validates (finetune.py: each epoch end and the last step, and every eval_every steps)."""
    every = cfg.get("eval_every")
    return "at each epoch's end and the last step" + (f", and every {every} steps" if every else "")


def algorithm_part(runs: Sequence[Mapping[str, Any]]) -> Section:
    """One FLYP step as pseudo-code, with the settings that ran (or a line saying none ran)."""
    s = Section("Algorithm")
    found = _finetune_settings(runs)
    if found is None:
        s.add("_No fine-tune run in this study; FLYP's step is not shown._\n")
        return s
    name, cfg = found
    used = {k: cfg[k] for k in ALGO_KEYS if k in cfg and cfg[k] not in (None, "", [], {})}
    s.add(f"One optimisation step of FLYP (contrastive fine-tuning, Goyal et al. 2023) as run by **{name}** "
          f"(loss `{cfg.get('loss', 'flyp')}`, settings from its finetune_config.json):\n",
          "```text\n"
          "captions[c] = prompts of class c (REAL, FAKE)          # fixed before training\n"
          f"for each step (batch B = {cfg.get('batch_size', '?')} training images x_i with labels y_i):\n"
          "    u_i = normalize(image_encoder(augment(x_i)))       # image embeddings\n"
          "    v_i = normalize(text_encoder(caption of y_i))      # one caption per image\n"
          "    L   = exp(logit_scale) * U V^T                     # B x B similarities\n"
          "    loss = (CE(L, i -> i) + CE(L^T, i -> i)) / 2        # symmetric in-batch contrastive loss\n"
          f"    clip gradient norm at {cfg.get('grad_clip', '?')}; AdamW step (lr {cfg.get('lr', '?')}, "
          f"weight decay {cfg.get('weight_decay', '?')}), "
          f"{_warmup(cfg)} then cosine decay to lr x {cfg.get('min_lr_ratio', '?')}\n"
          f"    {_when_validated(cfg)}: validation ROC AUC; keep the best step "
          f"(patience {cfg.get('patience', '?')})\n"
          "predict: p_fake = softmax(exp(logit_scale) * u . [v_REAL, v_FAKE])[FAKE]; "
          "threshold chosen on validation\n"
          "```\n",
          "Settings that ran: " + ", ".join(f"{k} = {v}" for k, v in used.items()) + ".\n")
    return s


# --------------------------------------------------------------------------- resources

def _hardware(run_json: Mapping[str, Any] | None) -> str:
    dev = (run_json or {}).get("device") or {}
    if dev.get("cuda_devices"):
        return ", ".join(dev["cuda_devices"])
    if dev.get("mps"):
        return "Apple MPS"
    return f"CPU ({dev['cpu_count']} cores)" if dev.get("cpu_count") else "unknown"


def resource_rows(study: Any, paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per run: run, method, train size, seed, status, device, seconds (runs.csv, else run.json)."""
    table = _runs_csv(paths)
    rows = []
    for t in table:
        if t.get("status") == "skipped":  # planned as impossible, never ran: no resources
            continue
        folder = Path(t.get("run_dir") or "")
        folder = folder if folder.is_absolute() else Path(t["_root"]) / folder
        # zero-shot writes a run folder per prompt set below its own: any of them names the device
        found = [folder / "run.json"] if (folder / "run.json").is_file() else sorted(folder.glob("*/run.json"))[:1]
        run_json = read_json(found[0]) if found else None
        seconds = t.get("seconds") or (run_json or {}).get("seconds")
        rows.append({"run": str(t.get("run_dir") or ""), "method": t.get("method"), "train_size": t.get("train_size"),
                     "seed": t.get("seed"), "status": t.get("status"), "device": _hardware(run_json),
                     "seconds": float(seconds) if seconds not in (None, "") else None})
    if table or study is None:
        return rows
    for r in study.runs:
        run_json = r.get("run") or {}
        rows.append({"run": Path(r["path"]).name, "method": r["metrics"].get("detector"),
                     "train_size": (run_json.get("args") or {}).get("train_size") or "all",
                     "seed": r["metrics"].get("seed"), "status": "complete", "device": _hardware(run_json),
                     "seconds": run_json.get("seconds")})
    return rows


RESOURCE_COLUMNS = (("run", "run", "text"), ("method", "method", "text"), ("train_size", "train size", "text"),
                    ("seed", "seed", "text"), ("status", "status", "text"), ("device", "device", "text"),
                    ("seconds", "seconds", "num"))


def resources_part(study: Any, paths: Sequence[str | os.PathLike]) -> Section:
    s = Section("Computer resources")
    rows = resource_rows(study, paths)
    if not rows:
        s.add("_No run recorded its wall time._\n")
        return s
    total = sum(r["seconds"] or 0.0 for r in rows)
    devices = sorted({r["device"] for r in rows})
    where = "the study's runs.csv (device: each run's run.json)" if _runs_csv(paths) else "each run's run.json"
    s.add(f"{len(rows)} run(s) on {', '.join(devices)}; {total:,.0f} s of wall time in all "
          f"({total / 3600:.2f} h), from {where}.\n", markdown_table(rows, RESOURCE_COLUMNS, digits=1))
    s.tables["resources.csv"] = (rows, None)
    return s


# --------------------------------------------------------------------------- future direction

def future_part(axes: Mapping[str, Sequence[str]], cross_rows: Sequence[Mapping[str, Any]] = ()) -> Section:
    """What the grid left open (axes with one value) and what the cross-dataset table suggests."""
    s = Section("Future Direction")
    lines = []
    single = [k for k, v in axes.items() if len(v) == 1 and k != "test set"]
    if single:
        lines.append("The grid held " + ", ".join(f"{k} at {axes[k][0]}" for k in single)
                     + ": none of the results says how they change along these axes.")
    if len(axes.get("seed", [])) < 3:
        lines.append("Fewer than three seeds ran, so seed-to-seed variation is barely measured; more seeds "
                     "would separate it from differences between methods.")
    if "all" not in axes.get("train size", ["all"]):
        lines.append("No run used the whole training set; the learning curves stop below it.")
    if not cross_rows:
        lines.append("No external test set was scored: whether a CIFAKE-trained detector transfers to other "
                     "generators or resolutions is untested here (`cifake evaluate --data EXTERNAL`).")
    else:
        for test_set in sorted({r["set"] for r in cross_rows}):
            on = [r for r in cross_rows if r["set"] == test_set and r.get("accuracy") is not None]
            drops = [r for r in on if r.get("acc_05") is not None and r.get("roc_auc") is not None
                     and r["roc_auc"] - 0.5 > 2 * abs(r["accuracy"] - 0.5) and r["roc_auc"] > 0.6]
            worst = min(on, key=lambda r: r["roc_auc"] if r.get("roc_auc") is not None else 1.0, default=None)
            if worst is not None and worst.get("roc_auc") is not None:
                lines.append(f"On {test_set}, ROC AUC ranges down to {worst['roc_auc']:.3f} ({worst['detector']}); "
                             "sets like it are where adaptation with few target images (a learning curve on the "
                             "target set) would be measured next.")
            if drops:
                lines.append(f"On {test_set}, {len(drops)} detector(s) rank images well (AUC) but their accuracy at "
                             "the CIFAKE-validation threshold is much nearer chance: the threshold does not "
                             "transfer, so recalibrating it on a few labelled target images is a next step.")
    s.add("\n".join(f"- {x}" for x in lines) + "\n" if lines else "_Nothing left open by this grid._\n")
    return s


# --------------------------------------------------------------------------- all of them

def seed_sections(run_dirs: Sequence[str | os.PathLike], study: Any, *, cross_rows: Sequence[Mapping[str, Any]] = (),
                  ) -> dict[str, Section]:
    """The five sections, keyed "related", "pipeline", "algorithm", "resources", "future"."""
    external_sets = sorted({str(r["set"]) for r in cross_rows})
    axes = grid_axes(study, run_dirs, external_sets)
    return {"related": related_works_part(), "pipeline": pipeline_part(study, run_dirs, external_sets),
            "algorithm": algorithm_part(study.runs if study is not None else []),
            "resources": resources_part(study, run_dirs), "future": future_part(axes, cross_rows)}


def _index(sections: Sequence[Any], title: str) -> int | None:
    return next((i for i, s in enumerate(sections) if s.title == title), None)


def with_study_sections(sections: Sequence[Any], run_dirs: str | os.PathLike | Iterable[str | os.PathLike],
                        study: Any, study_roots: Sequence[str | os.PathLike] = ()) -> list[Any]:
    """report.py's sections with these added: Related Works first; Pipeline and Algorithm after
    Methods; Learning curves and Cross-dataset results after Quantitative results (when they
    ran); Computer resources after Analysis; Future Direction after Discussion.

    study_roots: study folders whose index (runs.csv) lists every run of the grid; the learning
    curves are read from it, since `run_dirs` hold only the main cell's runs."""
    from cifake_lib.analysis.cross_dataset import (
        cross_dataset_rows,
        cross_dataset_section,
        external_runs,
    )
    from cifake_lib.analysis.learning_curves import learning_curve_records, learning_curve_section

    paths = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    cross_rows = cross_dataset_rows(external_runs(paths))
    # the grid's axes and every run's device time come from the study's index (OUT/runs.csv), which
    # lists the whole grid; `paths` hold only the main cell's runs
    index_dirs = list(dict.fromkeys(str(Path(p)) for p in [*paths, *study_roots]))
    parts = seed_sections(index_dirs, study, cross_rows=cross_rows)
    curves = learning_curve_section(learning_curve_records([*paths, *study_roots]))
    extra = [p for p in (curves, cross_dataset_section(paths)) if p]
    out = [parts["related"], *sections]
    for after, new in (("Methods", [parts["pipeline"], parts["algorithm"]]), ("Quantitative results", extra),
                       ("Analysis", [parts["resources"]]), ("Discussion", [parts["future"]])):
        i = _index(out, after)
        i = len(out) if i is None else i + 1
        out[i:i] = new
    return out
