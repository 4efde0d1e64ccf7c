"""report.md from run folders: the tables, figures and generated text of the study's step 4.

`build_report(run_dirs, out_dir, data=...)` searches every run dir recursively for test
metrics.json (runs.find_runs), keeps one zero-shot prompt set per CLIP model (the best on
validation), and writes into `out_dir`:

    report.md                 sections Methods, Quantitative results, Qualitative results,
                              Analysis, Discussion; every figure linked relative to it
    comparison.csv            the comparison table (ours + published rows, CIs)
    per_class.csv             accuracy on REAL and FAKE per CIFAR class, per detector
    calibration.csv           temperature (fitted on validation), ECE/Brier before and after
    roc.png, compare_auc.png, compare_accuracy.png, per_class.png, reliability.png
    gallery_<detector>.png    most confident right/wrong test images (needs `data`)
    saliency_<detector>.png   saliency of a few of them (needs `data` and the detector's weights)
    robustness.png            when a robustness.json is found under the run dirs

The text of Discussion is generated from the numbers: facts, with CI overlap stated.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib.analysis import compare
from cifake_lib.core.files import read_json, write_csv, write_text_atomic
from cifake_lib.evaluation.metrics import utc_now

REPORT = "report.md"
SECTIONS = ("Methods", "Quantitative results", "Qualitative results", "Analysis", "Discussion")
# Settings worth naming in the methods text, as run.json "args" / detector.json spell them.
SETTINGS = (("epochs", "epochs"), ("max_steps", "max steps"), ("lr", "learning rate"),
            ("batch_size", "batch size"), ("train", "trained encoders"), ("prompts", "prompts"),
            ("loss", "loss"), ("arch", "architecture"), ("mlp", "MLP probe"), ("C", "C"),
            ("alpha", "alpha"), ("subset", "subset (train:test)"), ("val_fraction", "validation fraction"),
            ("dedup", "deduplicated test"), ("seed", "seed"))


def slug(name: str) -> str:
    """A file-name-safe version of a detector name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_").lower() or "detector"


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


def _training(folder: Path) -> str:
    """What history.json says about training (CNN: epochs and best epoch; fine-tuning: steps)."""
    h = _optional_json(folder / "history.json")
    if isinstance(h, dict) and isinstance(h.get("epochs"), list):
        return f"{len(h['epochs'])} epoch(s) run, epoch {h.get('best_epoch')} kept (best on validation)"
    if isinstance(h, dict) and isinstance(h.get("records"), list):
        steps = [r.get("step") for r in h["records"] if isinstance(r, dict) and r.get("step") is not None]
        if steps:
            total = h.get("total_steps")
            return f"{max(steps)} optimiser step(s)" + (f" of {total} planned" if total else "")
    return ""


def _fmt_setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ":".join(map(str, v)) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    if isinstance(v, dict):
        return str(v.get("name") or "custom")
    return str(v)


def methods_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """One generated paragraph per run from its metrics, run.json, detector.json and history.json."""
    lines = []
    for r in runs:
        m, run_json, det = r["metrics"], r.get("run") or {}, r.get("detector") or {}
        folder = Path(r["path"])
        args = dict(run_json.get("args") or {})
        for nested in ("config", "train"):  # fine-tuning's whole config; the CNN's TrainConfig
            if isinstance(args.get(nested), dict):
                args = {**args[nested], **{k: v for k, v in args.items() if k != nested}}
        cfg = _optional_json(folder / "finetune_config.json")
        if isinstance(cfg, dict):
            args = {**cfg, **args}
        settings = []
        for key, label in SETTINGS:
            # detector.json knows what was used (e.g. the prompt set); run.json what was asked for
            v = det.get(key, args.get(key)) if key == "prompts" else args.get(key, det.get(key))
            if isinstance(v, dict) and "name" in v:  # a prompt set
                v = v["name"]
            if v is not None and v is not False and v != "" and not isinstance(v, dict):
                settings.append(f"{label} {_fmt_setting(v)}")
        mv = r.get("metrics_val") or {}
        sizes = f"{m['n']:,} test images ({m['n_real']:,} REAL, {m['n_fake']:,} FAKE)"
        if mv.get("n"):
            sizes += f", {mv['n']:,} validation images"
        src = m.get("threshold_source", "val" if mv else "default")
        threshold = (f"threshold {m['threshold']:.4f} (chosen on validation)" if src == "val"
                     else f"threshold {m['threshold']:.4f} ({src})")
        text = (f"- **{r['name']}** (`{m['detector']}`, kind {det.get('kind', '?')}): model `{m.get('model')}`, "
                f"data `{m.get('data')}`; {sizes}; {threshold}; seed {m.get('seed')}.")
        if settings:
            text += " Settings: " + ", ".join(settings) + "."
        training = _training(folder)
        if training:
            text += f" Training: {training}."
        if run_json.get("seconds") is not None:
            text += f" Wall time {float(run_json['seconds']):.0f} s on {_hardware(run_json)}."
        versions = run_json.get("versions") or {}
        if versions:
            text += " Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in
                                             ("torch", "transformers", "cifake_lib")) + "."
        lines.append(text)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- discussion

def _ci(row: Mapping[str, Any], metric: str, fmt: str = ".4f") -> str:
    ci = row.get(f"{metric}_ci95")
    return f" (95% CI {ci[0]:{fmt}}–{ci[1]:{fmt}})" if ci else ""


def discussion(rows: Sequence[Mapping[str, Any]], calibration: Sequence[Mapping[str, Any]],
               per_class: Sequence[Mapping[str, Any]], robustness_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Factual sentences generated from the tables (no claims the numbers do not carry)."""
    out = []
    ours = [r for r in rows if r.get("source") == "ours" and r.get("roc_auc") is not None]
    ranked = sorted(ours, key=lambda r: r["roc_auc"], reverse=True)
    if ranked:
        best = ranked[0]
        s = f"Best detector by ROC AUC: **{best['name']}**, AUC {best['roc_auc']:.4f}{_ci(best, 'roc_auc')}"
        if len(ranked) > 1:
            second = ranked[1]
            overlap = compare.ci_overlaps(best, second, "roc_auc")
            s += (f"; runner-up {second['name']}, AUC {second['roc_auc']:.4f}{_ci(second, 'roc_auc')}. ")
            s += {True: "Their 95% CIs overlap, so this test set does not separate them.",
                  False: "Their 95% CIs do not overlap.",
                  None: "(no CI for one of them)."}[overlap]
        else:
            s += "."
        out.append(s)
    by_acc = compare.best_by(rows, "accuracy")
    if by_acc:
        s = f"Highest accuracy: {by_acc['name']}, {by_acc['accuracy']:.2%}{_ci(by_acc, 'accuracy', '.2%')}"
        paper = next((r for r in rows if r.get("source") == "published" and r.get("name") == "CIFAKE paper CNN"), None)
        if paper and isinstance(paper.get("accuracy"), float):
            diff = by_acc["accuracy"] - paper["accuracy"]
            s += (f", {abs(diff) * 100:.2f} percentage points {'above' if diff >= 0 else 'below'} the CIFAKE paper's CNN "
                  f"({paper['accuracy']:.2%}, published; a different test protocol may apply)")
        out.append(s + ".")
    asym = []
    for r in ours:
        real_acc = _real_accuracy(r)
        if real_acc is not None and r.get("recall") is not None and abs(real_acc - r["recall"]) >= 0.05:
            more = "REAL as FAKE" if real_acc < r["recall"] else "FAKE as REAL"
            asym.append(f"{r['name']} errs more often calling {more} (REAL accuracy {real_acc:.2%}, "
                        f"FAKE recall {r['recall']:.2%})")
    if asym:
        out.append("Error asymmetry: " + "; ".join(asym) + ".")
    cal = [c for c in calibration if c.get("ece_after") is not None]
    if cal:
        parts = [f"{c['name']} {c['ece_before']:.4f} → {c['ece_after']:.4f} (T = {c['temperature']:.3g})"
                 for c in cal]
        out.append("Temperature scaling fitted on validation changes test ECE: " + "; ".join(parts) + ".")
    hard = _hardest_classes(per_class)
    if hard:
        out.append("Hardest CIFAR class (lowest mean of REAL and FAKE accuracy): "
                   + "; ".join(f"{n}: {c} ({v:.2%})" for n, (c, v) in hard.items()) + ".")
    if robustness_rows:
        from cifake_lib.analysis.robustness import most_fragile

        fragile = most_fragile(robustness_rows)
        hurt = {d: r for d, r in fragile.items() if r["accuracy_drop"] > 0}
        if hurt:
            out.append("Largest accuracy drop under perturbation: " + "; ".join(
                f"{d}: {r['label']} ({r['accuracy'] + r['accuracy_drop']:.2%} → {r['accuracy']:.2%})"
                for d, r in hurt.items()) + ".")
        steady = sorted(set(fragile) - set(hurt))
        if steady:
            out.append(f"No perturbation lowered the accuracy of {', '.join(steady)}.")
        kinds = _mean_drop_by_kind(robustness_rows)
        if kinds and max(kinds.values()) > 0:
            worst = max(kinds, key=kinds.get)
            out.append(f"Averaged over detectors at its strongest level, the most damaging perturbation is "
                       f"{worst} (mean accuracy drop {kinds[worst] * 100:.2f} percentage points).")
    if any(str(r.get("detector", "")).startswith("finetune:both") for r in ours):
        out.append("No published result fine-tunes both CLIP encoders on CIFAKE, so the finetune:both row has "
                   "no published counterpart.")
    return out


def _real_accuracy(row: Mapping[str, Any]) -> float | None:
    """Specificity from accuracy, recall and the class counts (the table row has no confusion)."""
    n, n_real, n_fake = row.get("n"), row.get("n_real"), row.get("n_fake")
    if not n_real or row.get("accuracy") is None or row.get("recall") is None or n is None:
        return None
    return (row["accuracy"] * n - row["recall"] * n_fake) / n_real


def _hardest_classes(per_class: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, float]]:
    out: dict[str, tuple[str, float]] = {}
    for r in per_class:
        vals = [v for v in (r.get("real_accuracy"), r.get("fake_accuracy")) if v is not None]
        if not vals:
            continue
        mean = float(np.mean(vals))
        if r["name"] not in out or mean < out[r["name"]][1]:
            out[r["name"]] = (r["cifar_class"], mean)
    return out


def _mean_drop_by_kind(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    strongest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        if r["perturbation"] == "none":
            continue
        key = (r["perturbation"], r["detector"])
        if key not in strongest or r["severity"] > strongest[key]["severity"]:
            strongest[key] = r
    drops: dict[str, list[float]] = {}
    for (kind, _), r in strongest.items():
        drops.setdefault(kind, []).append(r["accuracy_drop"])
    return {k: float(np.mean(v)) for k, v in drops.items()}


# --------------------------------------------------------------------------- figures

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


# --------------------------------------------------------------------------- the report

def _image(md: list[str], out: Path, fig: Any, name: str, alt: str) -> None:
    from cifake_lib.viz.plots import save_figure

    save_figure(fig, out / name)
    md.append(f"![{alt}]({name})\n")


def build_report(run_dirs: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                 data: Any = None, n_boot: int = 1000, gallery_k: int = 8, saliency: bool = True,
                 saliency_per_group: int = 1, detectors: Mapping[str, Any] | None = None, device: Any = None,
                 embeddings: bool = True, embedding_limit: int = 1000,
                 title: str = "CIFAKE detectors: report") -> Path:
    """Write report.md (and its CSVs and PNGs) into `out_dir`; returns the report's path.

    data: a data source (str), a Split or a CifakeData, for galleries and saliency; None skips
    them. saliency: also draw saliency maps of a few gallery images, with `detectors`
    ({run name: detector}, e.g. already loaded by a notebook) or else each run's detector
    loaded from its folder. embeddings: with data, a PCA/t-SNE figure of test image embeddings of
    the pretrained and the fine-tuned CLIP (`embedding_limit` images).
    """
    from cifake_lib.analysis.robustness import find_robustness, read_robustness, robustness_figure
    from cifake_lib.analysis.robustness import markdown as robustness_markdown
    from cifake_lib.methods.zeroshot import published_anchors
    from cifake_lib.viz.plots import compare_bar, roc_figure

    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_runs = compare.load_runs(run_dirs)
    if not all_runs:
        raise FileNotFoundError(f"no run folders (with a test metrics.json) under {', '.join(map(str, run_dirs))}")
    runs, notes = compare.select_runs(all_runs)

    rows = compare.comparison_rows(runs, n_boot=n_boot)
    per_class = compare.per_class_rows(runs)
    calibration = compare.calibration_rows(runs)
    write_csv(out / "comparison.csv", rows)
    write_csv(out / "per_class.csv", per_class)
    write_csv(out / "calibration.csv", calibration)
    robustness = []
    for path in find_robustness(run_dirs):
        try:
            robustness.append(read_robustness(path))
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping {path}: {e}", stacklevel=2)

    md: list[str] = [f"# {title}\n", f"Generated {utc_now()} by cifake_lib from {len(all_runs)} run folder(s) "
                     f"under {', '.join(f'`{d}`' for d in run_dirs)}. Label 1 = FAKE is the positive class; "
                     "every figure at a threshold uses the detector's own threshold, chosen on validation. "
                     "Test data were used for these numbers only.\n"]

    md += ["## Methods\n", methods_text(runs)]
    if notes:
        md.append("\n".join(f"- {n}" for n in notes) + "\n")

    # -- Quantitative results
    md += ["## Quantitative results\n", "### Comparison on the test split\n",
           "Ours: from each run's metrics.json; `value [95% bootstrap CI]` (accuracy and AUC CIs from "
           "metrics.json, the others bootstrapped from predictions.csv). Published rows are results "
           "reported elsewhere, shown for reference, never ours.\n",
           compare.markdown_table(rows, compare.COMPARISON_COLUMNS)]
    curves = compare.roc_curves(runs)
    if curves:
        _image(md, out, roc_figure(curves, title="ROC curves, test split"), "roc.png", "ROC curves of every detector")
    ours = [r for r in rows if r["source"] == "ours"]
    _image(md, out, compare_bar(ours, "roc_auc", published=published_anchors("roc_auc"),
                                title="ROC AUC (95% CI), published anchors dashed"),
           "compare_auc.png", "ROC AUC of every detector with published anchors")
    _image(md, out, compare_bar(ours, "accuracy", published=published_anchors("accuracy"),
                                title="Accuracy (95% CI), published anchors dashed"),
           "compare_accuracy.png", "Accuracy of every detector with published anchors")
    md.append("### Accuracy per CIFAR-10 class\n")
    if per_class:
        wide = compare.per_class_wide(per_class)
        md.append("Accuracy on the REAL and on the FAKE test images of each class, at each detector's threshold.\n")
        md.append(compare.markdown_table(wide, compare.per_class_wide_columns(wide), digits=3))
        _image(md, out, compare.per_class_heatmap(per_class), "per_class.png", "Per-class accuracy heatmap")
    else:
        md.append("_No CIFAR class information in the predictions._\n")

    # -- Qualitative results
    md.append("## Qualitative results\n")
    split = None
    if data is not None:
        try:
            split = _load_test_split(data)
        except (OSError, ValueError) as e:
            md.append(f"_Test images could not be loaded from `{data}` ({e}); no galleries._\n")
    if split is None and data is None:
        md.append("_No data given (`--data`), so no image galleries._\n")
    if split is not None:
        from cifake_lib.viz.gallery import run_gallery

        md.append("The most confident right and wrong test images of each detector, with p_fake, enlarged "
                  "by pixel repetition (nearest neighbour) so every pixel is shown as it is.\n")
        for r in runs:
            fig = run_gallery(r, split, k=gallery_k)
            if fig is None:
                md.append(f"_{r['name']}: its prediction ids are not in the loaded test split; no gallery._\n")
                continue
            md.append(f"### {r['name']}\n")
            _image(md, out, fig, f"gallery_{slug(r['name'])}.png", f"{r['name']}: gallery")
            if saliency:
                try:
                    from cifake_lib.analysis.explain import saliency_gallery
                    from cifake_lib.methods.detectors import load_detector

                    det = (detectors or {}).get(r["name"]) or load_detector(r["path"], device=device)
                    sfig = saliency_gallery(r, split, det, saliency_per_group)
                except Exception as e:  # a missing or foreign model must not sink the whole report
                    md.append(f"_Saliency for {r['name']} skipped: {type(e).__name__}: {e}_\n")
                    continue
                if sfig is not None:
                    _image(md, out, sfig, f"saliency_{slug(r['name'])}.png", f"{r['name']}: saliency")
        if saliency:
            md.append("Saliency: Grad-CAM on the CLIP vision encoder's last block input tokens (or the CNN's "
                      "last conv layer), attention rollout over the vision encoder, for the detector's own "
                      "decision; see `cifake_lib.analysis.explain`.\n")

    # -- Analysis
    md.append("## Analysis\n")
    if split is not None and embeddings:
        _embeddings_section(md, out, runs, split, limit=embedding_limit, device=device)
    md += ["### Calibration\n",
           "Temperature scaling: T fitted on the validation predictions (never test), then applied to the test "
           "scores. ECE: top-label, 15 bins. Ranking (AUC) and decisions at 0.5 do not change.\n",
           compare.markdown_table(calibration, compare.CALIBRATION_COLUMNS)]
    if any(r.get("predictions") is not None for r in runs):
        _image(md, out, compare.reliability_grid(runs), "reliability.png", "Reliability diagrams before and after")
    md.append("### Robustness\n")
    robustness_rows: list[dict] = []
    if not robustness:
        md.append("_No robustness results (robustness.json) under the run folders; run `cifake robustness`._\n")
    for i, rec in enumerate(robustness):
        rrows = rec["rows"]
        robustness_rows += rrows
        md.append(f"From `{rec['path']}` ({rec.get('n', '?')} test images, seed {rec.get('seed', '?')}): "
                  "accuracy at each detector's threshold / ROC AUC.\n")
        md.append(robustness_markdown(rrows))
        if rrows:
            _image(md, out, robustness_figure(rrows), f"robustness{'' if i == 0 else f'_{i}'}.png",
                   "Accuracy and AUC against perturbation severity")

    # -- Discussion
    md.append("## Discussion\n")
    facts = discussion(rows, calibration, per_class, robustness_rows)
    md.append("\n".join(f"- {f}" for f in facts) + "\n" if facts else "_Nothing to discuss yet._\n")
    path = out / REPORT
    write_text_atomic(path, "\n".join(md))
    return path


def _embeddings_section(md: list[str], out: Path, runs: Sequence[Mapping[str, Any]], split: Any, *,
                        limit: int, device: Any) -> None:
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
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(split), size=min(limit, len(split)), replace=False))
    images, labels = split.images[idx], split.labels[idx]
    try:
        features = {name: image_embeddings(ref, images, device=device) for name, ref in models.items()}
    except Exception as e:  # a model that cannot be loaded here must not sink the whole report
        md.append(f"_Embeddings skipped: {type(e).__name__}: {e}_\n")
        return
    md.append("### Image embeddings\n")
    md.append(f"CLIP image embeddings of {len(idx)} test images (seeded sample), projected to 2-D. "
              "Silhouette score (cosine) of the REAL/FAKE labels in the full embedding space: higher means "
              "better separated.\n")
    rows = [{"model": name, "silhouette": separation(f, labels)} for name, f in features.items()]
    md.append(compare.markdown_table(rows, [("model", "model", "text"), ("silhouette", "silhouette", "num")]))
    _image(md, out, embedding_figure(features, labels), "embeddings.png",
           "Test image embeddings before and after fine-tuning (PCA, t-SNE)")


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
    import tempfile

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
        from cifake_lib.clip.models import write_tiny_clip
        from cifake_lib.methods.zeroshot import run_zeroshot

        model = write_tiny_clip(Path(tempfile.mkdtemp(prefix="cifake_tiny_")) / "tiny_clip", seed=seed)
        run_zeroshot(small, runs_dir / "zeroshot", model=model, prompts=["plain", "ensemble"])
        written += [runs_dir / "zeroshot"]
    if "cnn" not in kinds:
        from cifake_lib.methods.cnn import TrainConfig, run_cnn

        run_cnn(small, runs_dir / "cnn", train_config=TrainConfig(epochs=1, seed=seed))
        written.append(runs_dir / "cnn")
    return written
