"""The notebooks run headless in smoke mode, are committed without outputs, and agree on set-up.

The four notebooks share one runs folder (`$CIFAKE_RUNS`), as they do for a user: 02 and 03
write their runs there and 04 analyses them, so the tests run in file order on one folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifake_lib.app.colab import REPO_URL, colab_badge_url, files_with_url
from cifake_lib.app.pipeline import execute_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(name: str, workdir: Path, timeout: int = 600) -> dict:
    """Execute `notebooks/<name>.ipynb` with nbclient in smoke mode, cwd = workdir."""
    env = {"CIFAKE_SMOKE": "1", "CIFAKE_RUNS": str(workdir / "runs")}
    return execute_notebook(NOTEBOOKS / f"{name}.ipynb", workdir, env, timeout=timeout)


def stderr_of(nb) -> str:
    """Everything the notebook wrote to stderr (warnings, raw progress bars, stray logs): shown red to a user.

    Also fails on a figure shown as its repr (`<Figure size ... with 0 Axes>`), which is what a
    user sees when a figure cannot be drawn.
    """
    reprs = [o["data"]["text/plain"] for c in nb.cells for o in c.get("outputs", [])
             if "image/png" not in o.get("data", {}) and "<Figure size" in str(o.get("data", {}).get("text/plain", ""))]
    assert not reprs, f"figures shown as text, not drawn: {reprs}"
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stderr")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


def _notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", _notebook_names())
def test_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    for cell in nb["cells"]:
        assert not cell.get("outputs"), f"{name}: a cell has outputs; strip them before committing"
        assert cell.get("execution_count") is None, f"{name}: a cell has an execution count"


@pytest.mark.parametrize("name", _notebook_names())
def test_first_cell_sets_up_colab_and_smoke_mode(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    first = "".join(nb["cells"][0]["source"]) if nb["cells"][0]["cell_type"] == "code" else \
        "".join(nb["cells"][1]["source"])
    assert REPO_URL in first and "colab_setup.sh" in first and "notebook_context()" in first


@pytest.mark.parametrize("name", _notebook_names())
def test_notebooks_import_only_the_public_api(name):
    """A notebook uses what a user can: `cifake_lib` (as `cl`) and `cifake_lib.viz`, never the internals."""
    import re

    import cifake_lib

    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    modules = set(re.findall(r"^\s*(?:from|import)\s+(cifake_lib[\w.]*)", code, flags=re.M))
    assert modules <= {"cifake_lib", "cifake_lib.viz"}, f"{name} imports {sorted(modules)}"
    used = set(re.findall(r"\bcl\.(\w+)", code)) | {
        n.strip() for m in re.findall(r"^\s*from cifake_lib import ([\w, ]+)", code, flags=re.M) for n in m.split(",")}
    assert used <= set(cifake_lib.__all__), f"{name} uses names outside cifake_lib.__all__: {used - set(cifake_lib.__all__)}"


def test_repo_url_copies_agree():
    """Every file that carries the repository URL carries the current one (see cifake_lib/colab.py)."""
    for f in files_with_url(ROOT):
        text = f.read_text()
        assert "github.com/" in text and REPO_URL in text, f"{f.name} lacks {REPO_URL}"
    readme = (ROOT / "README.md").read_text()
    for name in _notebook_names():
        assert colab_badge_url(name) in readme, f"README lacks the Colab badge of {name}"


def test_notebook_01_data_smoke(sample_dir, workdir, capfd):
    nb = run_notebook("01_data", workdir)
    assert "without encryption" not in capfd.readouterr().err  # the kernel runs on local sockets
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures >= 4
    assert stderr_of(nb) == ""


def test_notebook_02_smoke(sample_dir, workdir):
    nb = run_notebook("02_zero_shot", workdir)
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures >= 12  # comparison bar, five figures each for the best set and the probe, the anchors bar
    assert (workdir / "runs" / "zeroshot" / "summary.csv").is_file()
    assert (workdir / "runs" / "probe" / "probe.safetensors").is_file()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert stderr_of(nb) == ""
    tiny = workdir / "runs" / "tiny_clip"  # the smoke model lives with the runs that point at it
    assert (tiny / "config.json").is_file()
    run = workdir / "runs" / "zeroshot" / "plain"
    detector = json.loads((run / "detector.json").read_text())
    assert detector["model"] == "../../tiny_clip"  # relative to the run: the runs folder can move
    assert (run / detector["model"]).resolve() == tiny.resolve()


def test_notebook_03_fine_tune_smoke(sample_dir, workdir):
    """Tiny CLIP, 40 steps in chunks (live plot), test metrics, comparison with 02's runs when present."""
    nb = run_notebook("03_fine_tune", workdir)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    out = workdir / "runs" / "finetune"
    assert (out / "metrics.json").is_file() and (out / "model" / "config.json").is_file()
    assert json.loads((out / "detector.json").read_text())["detector"] == "finetune:both"
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures >= 7  # training curves, five run figures, the comparison bar
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "step 40/40 (finished)" in text
    assert stderr_of(nb) == ""


def test_notebook_04_analysis_smoke(sample_dir, workdir):
    """Reads the runs of 02 and 03 (or makes small ones), writes robustness results and report.md."""
    nb = run_notebook("04_analysis", workdir)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    runs = workdir / "runs"
    assert (runs / "robustness" / "robustness.json").is_file()
    report = (runs / "report" / "report.md").read_text()
    for section in ("## Quantitative results", "## Qualitative results", "## Analysis", "## Discussion"):
        assert section in report
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures >= 10  # ROC, AUC bars, heatmap, galleries, saliency, embeddings, robustness, reliability
    widgets = [o for o in nb.cells[-1].get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert widgets, "the explorer is displayed at the end"
    assert stderr_of(nb) == ""
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "found: zero-shot CLIP, linear probe, fine-tuned CLIP" in text
    # on its own it makes the headline leak-free (no unexplained †) and says it is a pipeline check
    assert "**Leak-free test split:**" in report and "†" not in report
    assert (runs / "evaluate").is_dir()
    shown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb.cells for o in c.get("outputs", []))
    assert shown.count("**Pipeline check, not a result.**") == 1 and report.count("**Pipeline check, not a result.**") == 1


def test_the_absence_claim_in_notebook_03_carries_the_date_of_the_search():
    """The claim that nothing published fine-tunes both encoders is dated, as the report's is."""
    from cifake_lib.evaluation.published import checked

    intro = "".join(json.loads((NOTEBOOKS / "03_fine_tune.ipynb").read_text())["cells"][0]["source"])
    assert f"As of {checked()} we found no published result" in intro
