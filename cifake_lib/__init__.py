"""cifake_lib: tell AI-generated images from real ones with CLIP, on CIFAKE.

Label convention everywhere: 1 = FAKE (AI-generated, the positive class), 0 = REAL.

The package root is the public API, for notebooks and scripts (`import cifake_lib as cl`):

    data = cl.load_cifake("path/to/CIFAKE", subset=(16_000, 4_000))   # or cl.load_data(cl.DataConfig(...))
    result = cl.run_probe(data, cl.ProbeConfig(model="openai/clip-vit-base-patch32"), "runs/probe")
    p_fake = cl.predict("runs/probe", ["a.png", "b.jpg"])           # or cl.load_detector(...)

Every name of `__all__` is imported on first use (PEP 562), so `import cifake_lib` imports no
torch, numpy or transformers. The settings dataclasses (`ProbeConfig`, `FinetuneConfig`, ...)
are each method's only signature; the runners `run_<stage>(data, cfg, out) -> RunResult` are
the methods' own `run` functions, the ones `cifake <stage>` calls (`app/stages.py`). The analysis modules `report`, `robustness`, `compare` and
`explain` are exported whole: notebook 04 builds report.md section by section from them. The
layers below import nothing from here but the constants: see docs/architecture.md, "Layers".
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

LABEL_NAMES = ("REAL", "FAKE")  # index == label
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# {module: names it gives the public API}; a (public, attr) pair renames where the attribute's own
# name would be unclear at the top level or is taken by another module's (the runners).
_FROM: dict[str, tuple[str | tuple[str, str], ...]] = {
    "cifake_lib.core.errors": ("CifakeError",),
    "cifake_lib.core.files": ("read_json",),
    "cifake_lib.core.formatting": ("format_metric",),
    "cifake_lib.core.logs": ("show_logs",),
    "cifake_lib.core.results": ("RunResult",),
    "cifake_lib.data.config": ("DataConfig", "load_data"),
    "cifake_lib.data.load": ("CifakeData", "Split", "format_summary", "load_cifake", "stratified_subset",
                             "summarize", "validation_split"),
    "cifake_lib.data.preprocess": ("ImagePreprocessor",),
    "cifake_lib.clip.features": ("image_features",),
    "cifake_lib.clip.models": ("load_backbone", "load_clip"),
    "cifake_lib.clip.tiny": ("write_tiny_clip", "write_tiny_model"),
    "cifake_lib.clip.prompts": ("PROMPT_SETS", "PromptSet", "get_prompt_set"),
    "cifake_lib.evaluation.metrics": ("apply_temperature", "bootstrap_ci", "choose_threshold", "compute_metrics",
                                      "expected_calibration_error", "fit_temperature", "metrics_record",
                                      "read_predictions"),
    "cifake_lib.evaluation.published": ("anchor_table", "published_anchors"),
    "cifake_lib.evaluation.runs": ("find_runs", "read_run", "runs_found_note"),
    "cifake_lib.evaluation.stats": ("compare_pair", "delong_test", "mcnemar_exact", "paired_bootstrap",
                                    "wilson_interval"),
    "cifake_lib.evaluation.study": ("RunKey", "index_runs", "read_index", "read_study"),
    "cifake_lib.viz.run_figures": ("figures_from_run", "table", "training_curves_figure"),
    "cifake_lib.methods.cnn_config": ("CNNConfig", "CnnStageConfig", ("CnnTrainConfig", "TrainConfig")),
    "cifake_lib.methods.config": ("EvaluateConfig", "ProbeConfig", "ZeroshotConfig"),
    "cifake_lib.methods.detectors": ("Detector", "load_detector"),
    "cifake_lib.methods.finetune": ("ClipClassifier", "caption_choices", "draw_captions", "finetune", "flyp_loss",
                                    "load_history", ("run_finetune", "run")),
    "cifake_lib.methods.finetune_config": ("FinetuneConfig",),
    "cifake_lib.methods.predict": ("predict", "predict_paths"),
    "cifake_lib.methods.probe": ("read_probe", ("run_probe", "run")),
    "cifake_lib.methods.zeroshot": ("ClipDetector", ("prompt_set_folder", "folder_name"), "read_zeroshot",
                                    ("run_zeroshot", "run")),
    "cifake_lib.methods.cnn": (("run_cnn", "run"),),
    "cifake_lib.methods.evaluate": (("run_evaluate", "run"),),
    "cifake_lib.data.stage": (("run_data", "run"),),
    "cifake_lib.analysis.config": ("ReportConfig", "RobustnessConfig"),
    "cifake_lib.analysis.robustness": (("run_robustness", "run"),),
    "cifake_lib.analysis.study": ("Study", "load_study", "paired_comparisons"),
    "cifake_lib.analysis.leak_free": ("leak_free_evaluations",),
    "cifake_lib.analysis.report_stage": (("run_report", "run"),),
    "cifake_lib.app.notebook": ("NotebookContext", "notebook_context"),
    "cifake_lib.app.pipeline": ("print_plan", "run_study"),
    "cifake_lib.app.widgets": ("Explorer",),
}
_MODULES = {name: f"cifake_lib.analysis.{name}" for name in ("compare", "explain", "report", "robustness")}

# public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    **{(n if isinstance(n, str) else n[0]): (m, n if isinstance(n, str) else n[1]) for m, ns in _FROM.items()
       for n in ns},
    **{name: (module, None) for name, module in _MODULES.items()},
}

__all__ = ["CIFAR_CLASSES", "LABEL_NAMES", "__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import a public name on first use, then keep it (PEP 562)."""
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        from difflib import get_close_matches

        close = get_close_matches(name, __all__, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AttributeError(f"module 'cifake_lib' has no attribute {name!r}{hint} (the public names: "
                             "cifake_lib.__all__; everything else lives in its module, e.g. "
                             "cifake_lib.methods.finetune)") from None
    import importlib

    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
