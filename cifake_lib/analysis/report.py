"""report.md from run folders: the tables, figures and generated text of the study's step 4.

`build_report(run_dirs, out_dir, data=...)` searches every run dir recursively for run folders
(analysis/study.py): the headline is the LEAK-FREE test split (the evaluate stage's re-scoring
with train/validation duplicates removed), one zero-shot prompt set per CLIP model (chosen on
validation). The report is assembled from sections, each computed once:

    study = load_study(run_dirs); results = compute_results(study)
    sections = [methods_section(...), quantitative_section(...), ..., references_section()]
    assemble_report(sections, out_dir, title=TITLE, preamble=preamble(study))

so a notebook can compute each part once, show it (`show_section`) and assemble the same parts. Files written into `out_dir`:

    report.md                 Methods, Quantitative results, Qualitative results, Analysis,
                              Discussion, References; every figure linked relative to it
    comparison.csv            headline table (leak-free), with acc@0.5, CIs, published rows
    comparison_with_duplicates.csv   the same detectors on the test split as loaded
    paired_comparisons.csv    detector_a, detector_b, metric, difference, ci_low, ci_high,
                              p_value (paired bootstrap; McNemar exact / DeLong)
    per_class.csv, calibration.csv, and the figures (roc.png, compare_*.png, per_class.png,
    reliability.png, gallery_*.png, saliency_*.png, embeddings.png, robustness.png)

The Discussion's comparative statements come from paired_comparisons.csv only; per-class and
per-perturbation statements carry an interval or are marked descriptive.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib.analysis import compare
from cifake_lib.analysis.parts import Section
from cifake_lib.analysis.report_costs import cost_section
from cifake_lib.analysis.study import (
    PAIRED_COLUMNS,
    Study,
    load_study,
    paired_comparisons,
    significant,
)
from cifake_lib.core.files import read_json, write_csv, write_text_atomic
from cifake_lib.core.formatting import format_p
from cifake_lib.evaluation.metrics import utc_now
from cifake_lib.evaluation.runs import detector_kind
from cifake_lib.evaluation.scale import Scale

REPORT = "report.md"
TITLE = "CIFAKE detectors: report"
# Settings worth naming in the methods text, as run.json "args" / detector.json spell them. Epochs
# and step caps are what was asked for; what ran comes from history.json / detector.json.
SETTINGS = (("epochs", "epochs planned"), ("max_steps", "step cap"), ("lr", "learning rate"),
            ("batch_size", "batch size"), ("train", "trained encoders"), ("prompts", "prompts"),
            ("loss", "loss"), ("arch", "architecture"), ("mlp", "MLP probe"), ("C", "C"),
            ("alpha", "alpha"), ("patience", "early-stopping patience (validations)"),
            ("subset", "subset (train:test)"), ("val_fraction", "validation fraction"), ("seed", "seed"))
# --train values whose added module learns at its own rate (FinetuneConfig.base_lr), and LoRA's shape
ADDED_LR = {"prompt": "prompt_lr", "lora": "lora_lr", "adapter": "adapter_lr"}
LORA_SETTINGS = (("lora_rank", "LoRA rank"), ("lora_alpha", "LoRA alpha"), ("lora_towers", "LoRA towers"))
METHOD_REFERENCES = (
    "DeLong, DeLong & Clarke-Pearson (1988). Comparing the areas under two or more correlated receiver "
    "operating characteristic curves: a nonparametric approach. Biometrics 44(3):837-845.",
    "McNemar (1947). Note on the sampling error of the difference between correlated proportions or "
    "percentages. Psychometrika 12(2):153-157.",
    "Efron & Tibshirani (1993). An Introduction to the Bootstrap. Chapman & Hall.",
    "Guo, Pleiss, Sun & Weinberger (2017). On calibration of modern neural networks. ICML. arXiv:1706.04599.",
    "Sun & Xu (2014). Fast implementation of DeLong's algorithm for comparing the areas under correlated "
    "receiver operating characteristic curves. IEEE Signal Processing Letters 21(11):1389-1393.",
)


def slug(name: str) -> str:
    """A file-name-safe version of a detector name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_").lower() or "detector"


# --------------------------------------------------------------------------- sections

@dataclass
class Results:
    """Every table of the report, computed once from a Study."""

    rows: list[dict[str, Any]]  # headline (leak-free) comparison, then published rows
    rows_with_duplicates: list[dict[str, Any]]
    per_class: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    paired_notes: list[str]
    robustness: list[dict[str, Any]]  # robustness.json records


def compute_results(study: Study, *, n_boot: int = 1000, n_boot_paired: int = 2000, seed: int = 0) -> Results:
    """The comparison tables (headline and with duplicates), per-class, calibration, paired tests, robustness."""
    from cifake_lib.analysis.robustness import find_robustness, read_robustness

    robustness = []
    for path in find_robustness(study.paths):
        try:
            robustness.append(read_robustness(path))
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping {path}: {e}", stacklevel=2)
    paired, notes = paired_comparisons(study.runs, n_boot=n_boot_paired, seed=seed)
    return Results(rows=compare.comparison_rows(study.runs, n_boot=n_boot, seed=seed),
                   rows_with_duplicates=compare.comparison_rows(study.with_duplicates, published=False,
                                                                n_boot=0),
                   per_class=compare.per_class_rows(study.runs), calibration=compare.calibration_rows(study.runs),
                   paired=paired, paired_notes=notes, robustness=robustness)


def captioned(section: Section, study: Study | None) -> Section:
    """`section` with a caption line under every figure and table when the study is a pipeline check
    (a tiny random CLIP, a subset: `Study.scale`), so no number of it is read as CLIP's; as it is
    otherwise."""
    caption = study.scale.caption() if study is not None else ""
    if not caption:
        return section
    blocks = []
    for block in section.blocks:
        blocks.append(block)
        is_figure = re.fullmatch(r"!\[[^\]]*\]\([^)]+\)\s*", block)
        if is_figure or any(line.startswith("|") for line in block.splitlines()):
            blocks.append(caption)
    return Section(section.title, blocks, dict(section.figures), dict(section.tables))


def assemble_report(sections: Sequence[Section], out_dir: str | os.PathLike, *, title: str,
                    preamble: str = "", study: Study | None = None) -> Path:
    """Write every section's figures and CSVs into `out_dir`, then report.md; returns its path.
    With `study`, a pipeline check's captions (`captioned`) are added to every figure and table."""
    from cifake_lib.viz.plots import save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}\n"] + ([preamble] if preamble else [])
    for s in (captioned(s, study) for s in sections):
        for name, fig in s.figures.items():
            save_figure(fig, out / name)
        for name, (rows, columns) in s.tables.items():
            write_csv(out / name, rows, columns)
        md += [f"## {s.title}\n", *s.blocks]
    path = out / REPORT
    write_text_atomic(path, "\n".join(md))
    return path


def show_section(section: Section, study: Study | None = None) -> None:
    """Display a section in a notebook as report.md shows it: its Markdown, its figures in place
    (with `study`, a pipeline check's captions too, as `assemble_report` writes them)."""
    from IPython.display import Markdown, display

    section = captioned(section, study)
    text: list[str] = []
    for block in section.blocks:
        link = re.fullmatch(r"!\[[^\]]*\]\(([^)]+)\)\s*", block)
        if link and link.group(1) in section.figures:
            if text:
                display(Markdown("\n".join(text)))
                text = []
            display(section.figures[link.group(1)])
        else:
            text.append(block)
    if text:
        display(Markdown("\n".join(text)))

# --------------------------------------------------------------------------- methods text

def _optional_json(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable ({e})", stacklevel=2)
        return None


def _hardware(run_json: Mapping[str, Any] | None) -> str:
    dev = (run_json or {}).get("device") or {}
    if dev.get("cuda_devices"):
        return ", ".join(dev["cuda_devices"])
    if dev.get("mps"):
        return "Apple MPS"
    if dev.get("cpu_count"):
        return f"CPU ({dev['cpu_count']} cores)"
    return "unknown hardware"


def _training(folder: Path, det: Mapping[str, Any]) -> str:
    """What ran, from history.json and detector.json: epochs or steps completed, the kept step or epoch."""
    h = _optional_json(folder / "history.json")
    if isinstance(h, dict) and isinstance(h.get("epochs"), list):  # the CNN
        return (f"{len(h['epochs'])} epoch(s) completed; epoch {h.get('best_epoch')} kept (best validation "
                "accuracy, then AUC)")
    if isinstance(h, dict) and isinstance(h.get("records"), list):  # fine-tuning
        steps = [r.get("step") for r in h["records"] if isinstance(r, dict) and r.get("step") is not None]
        ran = det.get("steps") or (max(steps) if steps else None)
        if ran is None:
            return ""
        per_epoch = h.get("steps_per_epoch")
        text = f"{ran} optimiser step(s) completed"
        if per_epoch:
            text += f" ({ran / per_epoch:.2f} epoch(s) of {per_epoch} steps)"
        if det.get("status"):
            text += f", status {det['status']}"
        if det.get("best_step") is not None:
            auc = det.get("best_val_auc")
            text += f"; step {det['best_step']} kept (early stopping on validation AUC" + (
                f" {auc:.4f})" if isinstance(auc, float) else ")")
        return text
    return ""


def _fmt_setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ":".join(map(str, v)) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    if isinstance(v, dict):
        return str(v.get("name") or "custom")
    return str(v)


def _settings(run: Mapping[str, Any]) -> list[str]:
    run_json, det = run.get("run") or {}, run.get("detector") or {}
    args = dict(run_json.get("args") or {})
    for nested in ("config", "train"):  # fine-tuning's whole config; the CNN's TrainConfig
        if isinstance(args.get(nested), dict):
            args = {**args[nested], **{k: v for k, v in args.items() if k != nested}}
    cfg = _optional_json(Path(run["path"]) / "finetune_config.json")
    if isinstance(cfg, dict):
        args = {**cfg, **args}
    if isinstance(det.get("selection"), dict) and det["selection"].get("best") is not None:
        args[det["selection"].get("parameter", "C")] = det["selection"]["best"]  # the probe's chosen C
    extra = ()
    if args.get("train") in ADDED_LR and args.get(ADDED_LR[args["train"]]) is not None:
        args["lr"] = args[ADDED_LR[args["train"]]]  # what learns is the added module, at its own rate
        extra = LORA_SETTINGS if args["train"] == "lora" else ()
    settings = []
    for key, label in (*SETTINGS, *extra):
        # detector.json knows what was used (e.g. the prompt set); run.json what was asked for
        v = det.get(key, args.get(key)) if key == "prompts" else args.get(key, det.get(key))
        if isinstance(v, dict) and "name" in v:  # a prompt set
            v = v["name"]
        if v is not None and v is not False and v != "" and not isinstance(v, dict):
            settings.append(f"{label} {_fmt_setting(v)}")
    return settings


def _model_text(model: Any, root: Path | None) -> str:
    """A run's model as the methods text names it: relative to the study (a folder inside it), else
    as recorded; a tiny random CLIP says so."""
    from cifake_lib.evaluation.scale import is_tiny_model

    return f"`{_relative(model, root)}`" + (" (a tiny CLIP with random weights)" if is_tiny_model(model) else "")


def methods_text(runs: Sequence[Mapping[str, Any]], root: Path | None = None) -> str:
    """One generated paragraph per run from its metrics, run.json, detector.json and history.json;
    model folders inside `root` (the study) are named relative to it."""
    lines = []
    for r in runs:
        m, run_json, det = r["metrics"], r.get("run") or {}, r.get("detector") or {}
        mv = r.get("metrics_val") or {}
        sizes = f"{m['n']:,} test images ({m['n_real']:,} REAL, {m['n_fake']:,} FAKE"
        sizes += ", leak-free)" if r.get("leak_free") else ")"
        if mv.get("n"):
            sizes += f", {mv['n']:,} validation images"
        src = m.get("threshold_source", "val" if mv else "default")
        threshold = (f"threshold {m['threshold']:.4f} (chosen on validation)" if src == "val"
                     else f"threshold {m['threshold']:.4f} ({src})")
        text = (f"- **{r['name']}** (`{m['detector']}`, kind {det.get('kind', '?')}): model "
                f"{_model_text(m.get('model'), root)}, data `{m.get('data')}`; {sizes}; {threshold}; "
                f"seed {m.get('seed')}.")
        settings = _settings(r)
        if settings:
            text += " Settings: " + ", ".join(settings) + "."
        sel = det.get("selection") if isinstance(det.get("selection"), dict) else None
        if sel and sel.get("grid"):
            text += (f" {sel.get('parameter', 'C')} chosen by validation {sel.get('metric', 'log loss')} among "
                     f"{len(sel['grid'])} values, {min(sel['grid']):g} to {max(sel['grid']):g}"
                     + (" (at the edge of that grid: a wider grid may fit better)." if sel.get("at_edge") else "."))
        training = _training(Path(r["path"]), det)
        if training:
            text += f" Ran: {training}."
        if run_json.get("seconds") is not None:
            text += f" Wall time {float(run_json['seconds']):.0f} s on {_hardware(run_json)}."
        versions = run_json.get("versions") or {}
        if versions:
            text += " Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in
                                             ("torch", "transformers", "cifake_lib")) + "."
        lines.append(text)
        for d in det.get("deviations_from_paper") or []:
            lines.append(f"    - deviation from the CIFAKE paper: {d}")
    return "\n".join(lines) + "\n"


def methods_section(study: Study) -> Section:
    s = Section("Methods")
    s.add(methods_text(study.runs, study_root(study)))
    if study.notes:
        s.add("\n".join(f"- {n}" for n in study.notes) + "\n")
    s.add("Choices: thresholds (maximising validation accuracy), the zero-shot prompt set (validation AUC), "
          "the probe's C (validation log loss), early stopping and the CNN's kept epoch (validation), "
          "temperature scaling (validation predictions). Test data gave the final numbers only. Class-aware "
          "prompts marginalise over the ten CIFAR classes: no detector sees a test image's true class.\n",
          "Comparisons are paired (every detector scored the same test images): a percentile bootstrap of "
          "the difference over resampled test images (the same indices for both detectors), McNemar's exact "
          "test for accuracy, DeLong's test for ROC AUC.\n")
    return s


# --------------------------------------------------------------------------- quantitative results

HEADLINE_COLUMNS = tuple(c for c in compare.COMPARISON_COLUMNS if c[0] != "source")


LEAK_FREE_HOW = ("the evaluate stage of `cifake run` (`cifake evaluate --dedup`), or in a notebook "
                 "`report.leak_free_evaluations(RUNS, data)` (notebook 04 does it on its own)")
DAGGER = ("† the test split as loaded: this detector has no leak-free evaluation, so some of its test images may "
          "also occur in train or validation.")


def _caption(study: Study) -> str:
    marked = any(not r.get("leak_free") for r in study.runs)
    if not study.runs or not any(r.get("leak_free") for r in study.runs):
        return ("**Test split as loaded (not leak-free):** no evaluation with train/validation duplicates "
                f"removed was found among the run folders; {LEAK_FREE_HOW} gives the leak-free headline.\n"
                + (f"\n{DAGGER}\n" if marked else ""))
    counts = sorted({(v["n"], v["fake"], v["real"]) for v in study.removed.values()})
    removed = "; ".join(f"{n:,} removed ({fake:,} FAKE, {real:,} REAL)" for n, fake, real in counts) or \
        "the number removed is not known (no scores with duplicates to compare)"
    text = (f"**Leak-free test split:** every test image whose pixels also occur in train or validation removed "
            f"(`evaluate --dedup`): {removed}.")
    if marked:
        text += f"\n\n{DAGGER}"
    return text + "\n"


def quantitative_section(study: Study, res: Results) -> Section:
    from cifake_lib.evaluation.published import anchors_beside, published_table
    from cifake_lib.viz.plots import anchored_title, compare_bar, roc_figure

    s = Section("Quantitative results")
    ours = [dict(r, name=r["name"] + ("" if run.get("leak_free") else " †"))
            for r, run in zip([r for r in res.rows if r["source"] == "ours"], study.runs, strict=True)]
    s.add("### Main results\n", _caption(study),
          "`value [95% bootstrap CI]`. **accuracy**: at each detector's threshold, chosen on validation (column "
          "threshold); **`acc@0.5`**: at p_fake >= 0.5, the natural threshold, which needs no labelled data. "
          "Accuracy and AUC intervals from metrics.json, the others bootstrapped from predictions.csv.\n",
          compare.markdown_table(ours, HEADLINE_COLUMNS))
    s.tables["comparison.csv"] = (res.rows, None)
    if res.rows_with_duplicates:
        s.add("### With duplicates (test split as loaded)\n",
              "The same detectors on every test image, including those that also occur in train; for reference.\n",
              compare.markdown_table(res.rows_with_duplicates, HEADLINE_COLUMNS))
        s.tables["comparison_with_duplicates.csv"] = (res.rows_with_duplicates, None)
    s.add("### Paired comparisons\n",
          "Difference A − B on the same test images: 95% paired-bootstrap interval; p from McNemar's exact "
          "test (accuracy, each detector at its own threshold) or DeLong's test (ROC AUC). Not corrected for "
          f"multiple comparisons ({len(res.paired)} tests).\n",
          compare.markdown_table([{**r, "p_value": format_p(r["p_value"])} for r in res.paired], PAIRED_TABLE)
          if res.paired else "_No pair of detectors to compare._\n")
    if res.paired_notes:
        s.add("\n".join(f"- {n}" for n in res.paired_notes) + "\n")
    s.tables["paired_comparisons.csv"] = (res.paired, PAIRED_COLUMNS)
    context = study.scale.reduced  # a pipeline check: published results are context, not a comparison
    s.add("### Published results (not ours)\n",
          (f"**Context only, not a comparison:** ours come from {study.scale.what()}, theirs from trained models "
           "on CIFAKE's test set. " if context else "")
          + "Reported by others on their own split and protocol, at their published precision; set beside the "
          "figure of ours named in the last column (a zero-shot figure, which tunes no threshold, beside `acc@0.5`). "
          "The figures below draw every one of them for their metric (one published only approximately as a "
          "hollow diamond).\n",
          compare.markdown_table(published_table(), PUBLISHED_COLUMNS))
    curves = compare.roc_curves(study.runs)
    if curves:
        split = "leak-free test split" if study.leak_free else "test split"
        s.image(roc_figure(curves, title=f"ROC curves, {split}"), "roc.png", "ROC curves of every detector")
    auc_anchors = anchors_beside("roc_auc")  # the published table's rows of each column, no more, no fewer
    s.image(compare_bar(ours, "roc_auc", published=auc_anchors, context_only=context,
                        title=anchored_title("ROC AUC (95% CI)", auc_anchors, context_only=context)),
            "compare_auc.png", "ROC AUC of every detector with the published results")
    acc_anchors = anchors_beside("accuracy")  # a zero-shot accuracy would be beside acc@0.5: not here
    s.image(compare_bar(ours, "accuracy", published=acc_anchors, context_only=context,
                        title=anchored_title("Accuracy at the validation threshold (95% CI)", acc_anchors,
                                             context_only=context)),
            "compare_accuracy.png", "Accuracy of every detector with the published results")
    _per_class_block(s, res.per_class)
    return s


PAIRED_TABLE = (("detector_a", "A", "text"), ("detector_b", "B", "text"), ("metric", "metric", "text"),
                ("value_a", "A", "num"), ("value_b", "B", "num"), ("difference", "A − B", "num"),
                ("ci_low", "CI low", "num"), ("ci_high", "CI high", "num"), ("p_value", "p", "text"),
                ("test", "test", "text"))
PUBLISHED_COLUMNS = (("name", "result", "text"), ("reference", "reference", "text"), ("setting", "setting", "text"),
                     ("metric", "metric", "text"), ("value", "value (as published)", "text"),
                     ("split", "split", "text"), ("compared_with", "beside our", "text"))


def _per_class_block(s: Section, per_class: list[dict[str, Any]]) -> None:
    s.add("### Accuracy per CIFAR-10 class\n")
    s.tables["per_class.csv"] = (per_class, None)
    if not per_class:
        s.add("_No CIFAR class information in the predictions._\n")
        return
    wide = compare.per_class_wide(per_class)
    n = max(max(r["n_real"], r["n_fake"]) for r in per_class)
    s.add(f"Accuracy on the REAL and on the FAKE test images of each class, at each detector's threshold "
          f"(descriptive: up to {n} images a cell).\n",
          compare.markdown_table(wide, compare.per_class_wide_columns(wide), digits=3))
    s.image(compare.per_class_heatmap(per_class), "per_class.png", "Per-class accuracy heatmap")


# --------------------------------------------------------------------------- qualitative results

def _load_test_split(data: Any) -> Any:
    """A Split from a Split, a CifakeData, or a data source string (its test split)."""
    if data is None:
        return None
    if hasattr(data, "ids") and hasattr(data, "images"):
        return data
    if hasattr(data, "test"):
        return data.test
    from cifake_lib.data.load import load_cifake

    return load_cifake(str(data), val_fraction=0.0).test


def qualitative_section(study: Study, split: Any, *, data: Any = None, load_error: str | None = None,
                        gallery_k: int = 8, saliency: bool = True, saliency_per_group: int = 1,
                        detectors: Mapping[str, Any] | None = None, device: Any = None) -> Section:
    """Galleries of the most confident right and wrong test images, and saliency maps of a few."""
    s = Section("Qualitative results")
    if load_error:
        s.add(f"_Test images could not be loaded from `{data}` ({load_error}); no galleries._\n")
    elif split is None:
        s.add("_No data given (`--data`), so no image galleries._\n")
    if split is None:
        return s
    from cifake_lib.viz.gallery import run_gallery

    s.add("The most confident right and wrong test images of each detector, with p_fake, enlarged by pixel "
          "repetition (nearest neighbour) so every pixel is shown as it is.\n")
    for r in study.runs:
        fig = run_gallery(r, split, k=gallery_k)
        if fig is None:
            s.add(f"_{r['name']}: its prediction ids are not in the loaded test split; no gallery._\n")
            continue
        s.add(f"### {r['name']}\n")
        s.image(fig, f"gallery_{slug(r['name'])}.png", f"{r['name']}: gallery")
        if saliency:
            try:
                from cifake_lib.analysis.explain import saliency_gallery
                from cifake_lib.methods.detectors import load_detector

                det = (detectors or {}).get(r["name"]) or load_detector(r["path"], device=device)
                sfig = saliency_gallery(r, split, det, saliency_per_group)
            except Exception as e:  # a missing or foreign model must not sink the whole report
                s.add(f"_Saliency for {r['name']} skipped: {type(e).__name__}: {e}_\n")
                continue
            if sfig is not None:
                s.image(sfig, f"saliency_{slug(r['name'])}.png", f"{r['name']}: saliency")
    if saliency:
        s.add("Saliency: Grad-CAM on the CLIP vision encoder's last block input tokens (or the CNN's last conv "
              "layer), attention rollout over the vision encoder, for the detector's own decision; see "
              "`cifake_lib.analysis.explain`.\n")
    return s


# --------------------------------------------------------------------------- analysis

def analysis_section(study: Study, res: Results, split: Any, *, embeddings: bool = True,
                     embedding_limit: int = 1000, device: Any = None) -> Section:
    """Embeddings (with data), calibration before/after temperature scaling, robustness."""
    s = Section("Analysis")
    if split is not None and embeddings:
        _embeddings_block(s, study.runs, split, limit=embedding_limit, device=device)
    s.add("### Calibration\n",
          "Temperature scaling: T fitted on the validation predictions (never test), then applied to the test "
          "scores. ECE: top-label, 15 bins; Brier: mean squared error of p_fake. Ranking (AUC) and decisions at "
          "0.5 do not change. A temperature that makes the test scores nearly constant (sd < "
          f"{compare.UNINFORMATIVE_SD}) is reported as uninformative: a constant 0.5 has a low ECE on balanced "
          "data and separates nothing.\n",
          compare.markdown_table(res.calibration, compare.CALIBRATION_COLUMNS))
    s.tables["calibration.csv"] = (res.calibration, None)
    if any(r.get("predictions") is not None for r in study.runs):
        s.image(compare.reliability_grid(study.runs, res.calibration), "reliability.png", "Reliability diagrams before and after")
    _robustness_block(s, res.robustness)
    return s


def _robustness_block(s: Section, records: Sequence[Mapping[str, Any]]) -> None:
    from cifake_lib.analysis.robustness import markdown as robustness_markdown
    from cifake_lib.analysis.robustness import robustness_figure

    s.add("### Robustness\n")
    if not records:
        s.add("_No robustness results (robustness.json) under the run folders; run `cifake robustness`._\n")
    for i, rec in enumerate(records):
        s.add(f"From `{rec['path']}` ({rec.get('n', '?')} test images, seed {rec.get('seed', '?')}; the test split "
              "as loaded): accuracy at each detector's threshold / ROC AUC. Descriptive: no intervals.\n",
              robustness_markdown(rec["rows"]))
        if rec["rows"]:
            s.image(robustness_figure(rec["rows"]), f"robustness{'' if i == 0 else f'_{i}'}.png",
                    "Accuracy and AUC against perturbation severity")


def _embeddings_block(s: Section, runs: Sequence[Mapping[str, Any]], split: Any, *, limit: int,
                      device: Any) -> None:
    """PCA and t-SNE of test image embeddings, pretrained vs fine-tuned CLIP, with silhouette scores."""
    from cifake_lib.analysis.embeddings import (
        embedding_figure,
        image_embeddings,
        models_before_after,
        separation,
    )

    models = models_before_after(runs)
    if not models:
        return
    from cifake_lib.data.load import stratified_subset

    # as many REAL as FAKE (a plain random draw gave 161/139), each stratified by CIFAR class; seeded
    n = min(limit, 2 * int(min((split.labels == 0).sum(), (split.labels == 1).sum())))
    n -= n % 2
    if n == 0:
        return
    sample = stratified_subset(split, n, seed=0)
    images, labels = sample.images, sample.labels
    try:
        features = {name: image_embeddings(ref, images, device=device) for name, ref in models.items()}
    except Exception as e:  # a model that cannot be loaded here must not sink the whole report
        s.add(f"_Embeddings skipped: {type(e).__name__}: {e}_\n")
        return
    s.add("### Image embeddings\n",
          f"CLIP image embeddings of {n} test images ({n // 2} REAL, {n // 2} FAKE, stratified by CIFAR class, "
          "seeded), projected to 2-D. Silhouette score "
          "(cosine) of the REAL/FAKE labels in the full embedding space: higher means better separated.\n")
    rows = [{"model": name, "silhouette": separation(f, labels)} for name, f in features.items()]
    s.add(compare.markdown_table(rows, [("model", "model", "text"), ("silhouette", "silhouette", "num")]))
    s.image(embedding_figure(features, labels), "embeddings.png",
            "Test image embeddings before and after fine-tuning (PCA, t-SNE)")


# --------------------------------------------------------------------------- discussion

METRIC_WORDS = {"roc_auc": "ROC AUC", "accuracy": "accuracy"}


def _p_words(p: float) -> str:
    return format_p(p) if p < 1e-4 else "= " + format_p(p)


def paired_statement(row: Mapping[str, Any]) -> str:
    """One sentence from one paired_comparisons row: "higher/lower" only when the table says so."""
    metric = METRIC_WORDS.get(row["metric"], row["metric"])
    d, lo, hi, p = row["difference"], row["ci_low"], row["ci_high"], row["p_value"]
    if d is None or lo is None or p is None:
        return f"{row['detector_a']} vs {row['detector_b']}, {metric}: not computable on these images"
    numbers = f"A − B = {d:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], {row['test']} p {_p_words(p)}"
    if significant(row):
        word = "higher" if d > 0 else "lower"
        return f"{row['detector_a']} has {word} {metric} than {row['detector_b']} ({numbers})"
    if lo > 0 or hi < 0:  # the two criteria disagree: say so rather than "not distinguishable"
        return (f"{row['detector_a']} vs {row['detector_b']}, {metric}: mixed evidence, not called a difference "
                f"(the bootstrap interval excludes 0 but the test does not reach p < 0.05: {numbers})")
    return f"{row['detector_a']} and {row['detector_b']} are not distinguishable on {metric} here ({numbers})"


def _zero_shot_thresholds(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r.get("source") == "ours" and str(r.get("detector", "")).startswith("zeroshot") \
                and r.get("accuracy_at_0.5") is not None:
            out.append(f"{r['name']}: accuracy {r['accuracy']:.2%} at the threshold {r['threshold']:.4f} chosen on "
                       f"labelled validation data, {r['accuracy_at_0.5']:.2%} at 0.5 (no labels needed)")
    return ["Zero-shot accuracy depends on the threshold: " + "; ".join(out) + "."] if out else []


def _published_statements(rows: Sequence[Mapping[str, Any]], leak_free: bool = True,
                          scale: Scale | None = None) -> list[str]:
    """Descriptive: a published figure beside ours of the same setting (different split and protocol)."""
    from cifake_lib.evaluation.published import cite, compared_with, published_results

    scale = scale or Scale()
    kinds = {"supervised": ("cnn",), "probe": ("probe",), "zero-shot": ("zeroshot",), "fine-tuned": ("finetune",)}
    split = "leak-free split" if leak_free else "test split as loaded"
    out = []
    for e in published_results():
        key = compare.comparison_key(compared_with(e))
        ours = [r for r in rows if r.get("source") == "ours" and r.get(key) is not None
                and detector_kind(r.get("detector", "")) in kinds[e["setting"]]]
        if ours:
            mine = "; ".join(f"{r['name']} {r[key]:.2%}" if e["metric"] == "accuracy" else f"{r['name']} {r[key]:.4f}"
                             for r in ours)
            out.append(f"Published {e['name']} ({cite(e)}): {METRIC_WORDS.get(e['metric'], e['metric'])} {e['text']} "
                       f"on {e['split']}; ours ({compare.as_code_if_at(compared_with(e))}, {split}): {mine}. "
                       + (f"Context only, not a comparison: ours come from {scale.what()}." if scale.reduced else
                          "Descriptive only: a different split and protocol, no paired test is possible."))
    return out


def _wilson_text(right: int, n: int) -> str:
    from cifake_lib.evaluation.stats import wilson_interval

    ci = wilson_interval(right, n)
    return f"{right / n:.2%} of {n}, 95% Wilson CI [{ci[0]:.2%}, {ci[1]:.2%}]" if ci else "no images"


def _hardest_classes(per_class: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, int, int]]:
    """{detector: (class, right, n)}: the class with the lowest accuracy over its REAL and FAKE images."""
    out: dict[str, tuple[str, int, int]] = {}
    for r in per_class:
        right = sum(round((r.get(f"{w}_accuracy") or 0.0) * r[f"n_{w}"]) for w in ("real", "fake"))
        n = r["n_real"] + r["n_fake"]
        if n and (r["name"] not in out or right / n < out[r["name"]][1] / out[r["name"]][2]):
            out[r["name"]] = (r["cifar_class"], right, n)
    return out


def _real_accuracy(row: Mapping[str, Any]) -> float | None:
    """Specificity from accuracy, recall and the class counts (the table row has no confusion)."""
    n, n_real, n_fake = row.get("n"), row.get("n_real"), row.get("n_fake")
    if not n_real or row.get("accuracy") is None or row.get("recall") is None or n is None:
        return None
    return (row["accuracy"] * n - row["recall"] * n_fake) / n_real


def _mean_drop_by_kind(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    from cifake_lib.analysis.robustness import CLEAN

    strongest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        if r["perturbation"] == CLEAN:
            continue
        key = (r["perturbation"], r["detector"])
        if key not in strongest or r["severity"] > strongest[key]["severity"]:
            strongest[key] = r
    drops: dict[str, list[float]] = {}
    for (kind, _), r in strongest.items():
        drops.setdefault(kind, []).append(r["accuracy_drop"])
    return {k: float(np.mean(v)) for k, v in drops.items()}


def _descriptive_statements(rows: Sequence[Mapping[str, Any]], per_class: Sequence[Mapping[str, Any]],
                            robustness_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Error asymmetry, per-class and per-perturbation facts: with an interval or marked descriptive."""
    out = []
    asym = []
    for r in rows:
        real_acc = _real_accuracy(r) if r.get("source") == "ours" else None
        if real_acc is not None and r.get("recall") is not None and abs(real_acc - r["recall"]) >= 0.05:
            more = "REAL as FAKE" if real_acc < r["recall"] else "FAKE as REAL"
            asym.append(f"{r['name']} errs more often calling {more} (REAL accuracy {real_acc:.2%} of "
                        f"{r['n_real']:,}, FAKE recall {r['recall']:.2%} of {r['n_fake']:,})")
    if asym:
        out.append("Error asymmetry (point estimates): " + "; ".join(asym) + ".")
    hard = _hardest_classes(per_class)
    if hard:
        out.append("Lowest-accuracy CIFAR class of each detector (point estimate; the intervals show how little a "
                   "cell this size can tell): " + "; ".join(f"{n}: {c} ({_wilson_text(right, k)})"
                                                           for n, (c, right, k) in hard.items()) + ".")
    if robustness_rows:
        from cifake_lib.analysis.robustness import most_fragile

        n = max(int(r.get("n") or 0) for r in robustness_rows)
        fragile = most_fragile(robustness_rows)
        hurt = {d: r for d, r in fragile.items() if r["accuracy_drop"] > 0}
        if hurt:
            out.append(f"Largest accuracy drop under perturbation (descriptive, {n} images, no interval): " + "; ".join(
                f"{d}: {r['label']}" + (f" (tied with {len(r['tied_with'])} other perturbation(s))" if r.get("tied_with")
                                        else "") + f" ({r['accuracy'] + r['accuracy_drop']:.2%} → {r['accuracy']:.2%})"
                for d, r in hurt.items()) + ".")
        kinds = _mean_drop_by_kind(robustness_rows)
        if kinds and max(kinds.values()) > 0:
            worst = max(kinds, key=kinds.get)
            out.append(f"Averaged over detectors at its strongest level, the perturbation with the largest mean "
                       f"accuracy drop is {worst} ({kinds[worst] * 100:.2f} percentage points; descriptive).")
    return out


def _calibration_statements(calibration: Sequence[Mapping[str, Any]]) -> list[str]:
    parts = []
    for c in calibration:
        if c.get("ece_after") is None:
            continue
        change = (f"ECE {c['ece_before']:.4f} → {c['ece_after']:.4f}, Brier {c['brier_before']:.4f} → "
                  f"{c['brier_after']:.4f} (T = {c['temperature']:.3g})")
        if str(c.get("verdict", "")).startswith("uninformative"):
            parts.append(f"{c['name']}: uninformative, not an improvement: T squeezes every test score to about "
                         f"{0.5:.1f} (score sd {c['sd_after']:.4f}); {change}")
        else:
            parts.append(f"{c['name']}: {c['verdict']}; {change}")
    return ["Temperature scaling fitted on validation, on test: " + "; ".join(parts) + "."] if parts else []


def discussion(study: Study, res: Results) -> list[str]:
    """Generated sentences. "Better than" / "not distinguishable" come from the paired table only."""
    from cifake_lib.evaluation.published import absence_claim

    check = study.scale.pipeline_check  # a tiny random CLIP: the statements test the pipeline, not CLIP
    out = [f"This study is a pipeline check: its detectors were made with {study.scale.what()}. The paired "
           "comparisons below check that the pipeline runs and that its tests are computed; they say nothing "
           "about CLIP on CIFAKE."] if check else [
        f"These detectors were trained and tested on {study.scale.what()}: the comparisons below hold for "
        "that subset."] if study.scale.reduced else []
    out += [("Pipeline check: " if check else "") + paired_statement(r) + "." for r in res.paired]
    if res.paired:
        out.append(f"A difference is called higher or lower only when its paired interval excludes 0 and its "
                   f"test gives p < 0.05; {len(res.paired)} tests, not corrected for multiple comparisons.")
    out += _zero_shot_thresholds(res.rows)
    out += _published_statements(res.rows, study.leak_free, study.scale)
    out += _calibration_statements(res.calibration)
    out += _descriptive_statements(res.rows, res.per_class, [r for rec in res.robustness for r in rec["rows"]])
    if any(str(r["metrics"].get("detector", "")).startswith("finetune:both") for r in study.runs):
        out.append(absence_claim())
    return out


def discussion_section(study: Study, res: Results) -> Section:
    s = Section("Discussion")
    facts = discussion(study, res)
    s.add("\n".join(f"- {f}" for f in facts) + "\n" if facts else "_Nothing to discuss yet._\n")
    return s


def references_section() -> Section:
    """The published results' sources (published.toml) and the statistical methods used."""
    from cifake_lib.evaluation.published import references

    s = Section("References")
    s.add("\n".join(f"- {r}" for r in [*references(), *METHOD_REFERENCES]) + "\n")
    return s


# --------------------------------------------------------------------------- the report

def build_report(run_dirs: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                 data: Any = None, n_boot: int = 1000, gallery_k: int = 8, saliency: bool = True,
                 saliency_per_group: int = 1, detectors: Mapping[str, Any] | None = None, device: Any = None,
                 embeddings: bool = True, embedding_limit: int = 1000, study: Study | None = None,
                 results: Results | None = None, title: str = TITLE,
                 study_roots: Sequence[str | os.PathLike] = ()) -> Path:
    """Write report.md (and its CSVs and PNGs) into `out_dir`; returns its path.

    run_dirs: run folders, or folders searched recursively (a whole study folder works).
    data: a data source (str), a Split or a CifakeData, for galleries and saliency; None skips
    them. saliency: also draw saliency maps, with `detectors` ({run name: detector}, e.g. already
    loaded by a notebook) or else each run's detector loaded from its folder. embeddings: with
    data, PCA/t-SNE of test image embeddings (`embedding_limit` images). study, results:
    already computed by `load_study` / `compute_results` (a notebook computes them once).
    study_roots: the study folders the runs come from (their index gives the grid's axes and the
    learning curves).
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    study = study or load_study(run_dirs)
    results = results or compute_results(study, n_boot=n_boot)
    split, error = None, None
    try:
        split = headline_test_split(study, data)
    except (OSError, ValueError) as e:
        error = str(e)
    core = [
        methods_section(study),
        quantitative_section(study, results),
        qualitative_section(study, split, data=data, load_error=error, gallery_k=gallery_k, saliency=saliency,
                            saliency_per_group=saliency_per_group, detectors=detectors, device=device),
        analysis_section(study, results, split, embeddings=embeddings, embedding_limit=embedding_limit,
                         device=device),
        discussion_section(study, results),
        references_section(),
    ]
    sections = full_sections(core, study, run_dirs, study_roots=study_roots)
    return assemble_report(sections, out_dir, title=title, preamble=preamble(study), study=study)


def _insert_after(sections: list[Section], title: str, new: Sequence[Section]) -> None:
    i = next((k for k, s in enumerate(sections) if s.title == title), len(sections) - 1)
    sections[i + 1:i + 1] = new


def full_sections(core: Sequence[Section], study: Study, run_dirs: Sequence[str | os.PathLike], *,
                  study_roots: Sequence[str | os.PathLike] = ()) -> list[Section]:
    """Every section of report.md in order: `core` (methods, quantitative, qualitative, analysis,
    discussion, references, as notebook 04 computes and shows them one by one) with the rest put in
    place: the grid's axes after the quantitative results, the cost of each method after the
    analysis, and the study's other sections (related works, pipeline, algorithm, learning curves,
    cross-dataset results, computer resources, future direction: `report_sections`)."""
    from cifake_lib.analysis.backbones import backbone_comparison
    from cifake_lib.analysis.grid import TITLES, grid_sections
    from cifake_lib.analysis.report_sections import with_study_sections
    from cifake_lib.evaluation.study import read_index

    sections, grid, index = list(core), [], []
    for root in study_roots:
        rows = read_index(root)
        index += rows
        for s in grid_sections(Path(root), rows):
            if s.title == TITLES["model"]:  # along the backbone: each backbone's best against the default's
                backbone_comparison(root, rows, s)
            grid.append(s)
    _insert_after(sections, "Quantitative results", grid)
    _insert_after(sections, "Analysis", [cost_section(study, index)])
    return with_study_sections(sections, run_dirs, study, study_roots)


def banner(study: Study) -> str:
    """The banner at the top of report.md and notebook 04 when the study is a pipeline check (a tiny
    random CLIP, a subset of CIFAKE); empty for a study of pretrained models on the whole of CIFAKE."""
    return study.scale.banner()


def study_root(study: Study) -> Path | None:
    """The folder that holds every run folder of the study (a `cifake run` folder, a runs folder)."""
    try:
        return Path(os.path.commonpath([str(Path(p).resolve()) for p in study.paths]))
    except ValueError:  # none, or on different drives
        return None


def _relative(path: Any, root: Path | None) -> str:
    """`path` relative to `root` when it lies inside it (what stays true when the study moves), else as is."""
    try:
        if root is None or not Path(str(path)).is_absolute() or not Path(str(path)).exists():
            return str(path)  # a Hub id, a name ("cifake-cnn"), or a folder no longer there
        return Path(str(path)).resolve().relative_to(root).as_posix()
    except (ValueError, OSError):
        return str(path)


def preamble(study: Study) -> str:
    """report.md's opening paragraph: the pipeline-check banner (when it is one), where the runs came
    from, the label convention, what chose what."""
    root = study_root(study)
    folders = ", ".join(f"`{_relative(d, root) or '.'}`" for d in study.paths)
    text = (f"Generated {utc_now()} by cifake_lib from {study.n_folders} run folder(s) under {folders}"
            + (f" (in `{root}`)" if root is not None else "") + ". Label 1 = FAKE is the positive class. Every "
            "choice (threshold, prompt set, C, early stopping, temperature) was made on validation data; test data "
            "gave these numbers only. Main numbers: "
            + ("the leak-free test split" if study.leak_free else "the test split as loaded (not leak-free)")
            + " (see Quantitative results).\n")
    return banner(study) + "\n" + text if banner(study) else text


def headline_test_split(study: Study, data: Any) -> Any:
    """The test images the report shows: `data` (a source, a Split or a CifakeData; None: none)
    loaded and kept to the headline's images (`headline_split`). Notebook 04 calls it too."""
    split = _load_test_split(data)
    return None if split is None else headline_split(split, study)


def headline_split(split: Any, study: Study) -> Any:
    """The loaded test split restricted to the images the headline scored (the leak-free ones when it
    is leak-free; a run's subset), so galleries and embeddings show only images the tables count."""
    keep = set()
    for r in study.runs:
        if r.get("predictions") is not None:
            keep |= set(r["predictions"]["id"].tolist())
    idx = np.array([i for i, x in enumerate(split.ids) if x in keep], dtype=np.int64)
    return split.take(idx) if 0 < len(idx) < len(split) and hasattr(split, "take") else split


def linked_images(report: str | os.PathLike) -> list[Path]:
    """The image files report.md links to (relative links resolved against its folder)."""
    report = Path(report)
    text = report.read_text(encoding="utf-8")
    return [report.parent / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def section_text(report: str | os.PathLike, title: str) -> str:
    """The body of the `## title` section of report.md (up to the next `## `)."""
    text = Path(report).read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        raise ValueError(f"{report}: no section '## {title}'")
    return match.group(1).strip() + "\n"


def ensure_smoke_runs(runs_dir: str | os.PathLike, data: str | None = None, *, subset: tuple[int, int] = (400, 200),
                      seed: int = 0) -> list[Path]:
    """Smoke mode: make the small runs that notebook 04 needs when `runs_dir` lacks them.

    A zero-shot run of a tiny offline CLIP (two prompt sets) when there is no CLIP run, and the
    CIFAKE paper's CNN (1 epoch) when there is no CNN run; on `subset` of `data`. Returns the
    run folders it wrote (none when both kinds exist).
    """
    from cifake_lib.evaluation.runs import find_runs

    runs_dir = Path(runs_dir)
    kinds = set()
    if runs_dir.exists():
        for folder in find_runs(runs_dir):
            det = _optional_json(folder / "detector.json") or {}
            kinds.add(det.get("kind"))
    written: list[Path] = []
    if {"clip", "cnn"} <= kinds:
        return written
    from cifake_lib.data.load import load_cifake

    small = load_cifake(data, subset=subset, val_fraction=0.2, seed=seed)
    if "clip" not in kinds:
        from cifake_lib.clip.tiny import write_tiny_clip
        from cifake_lib.methods import zeroshot
        from cifake_lib.methods.config import ZeroshotConfig

        # inside the runs folder (the notebooks' own tiny CLIP when there is one): the runs
        # record it relative to themselves, so the folder can be moved or copied whole
        model = runs_dir / "tiny_clip"
        if not (model / "config.json").is_file():
            write_tiny_clip(model, seed=seed)
        zeroshot.run(small, ZeroshotConfig(model=str(model), prompts="plain,ensemble"), runs_dir / "zeroshot")
        written += [runs_dir / "zeroshot"]
    if "cnn" not in kinds:
        from cifake_lib.methods import cnn

        cnn.run(small, cnn.CnnStageConfig(train=cnn.TrainConfig(epochs=1, seed=seed)), runs_dir / "cnn")
        written.append(runs_dir / "cnn")
    return written
