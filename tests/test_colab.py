"""The notebooks' first cell on a (faked) Colab runtime: a failed clone tells the user what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cifake_lib.app.colab import REPO_URL, files_with_url, set_url

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_cell(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return next("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_notebook_has_the_same_first_cell():
    assert len({first_cell(nb) for nb in NOTEBOOKS}) == 1


def run_first_cell(tmp_path: Path, git_script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the first cell in a fresh Python where google.colab imports, cifake_lib does not, and
    `git` is a script of ours (the %magic line is IPython's; plain Python skips it)."""
    fake = tmp_path / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text("#!/bin/sh\n" + git_script)
    (bin_dir / "git").chmod(0o755)
    code = "\n".join(line for line in first_cell(NOTEBOOKS[0]).splitlines() if not line.startswith("%"))
    prelude = "import sys, google.colab\nsys.modules['cifake_lib'] = None  # not installed yet\n"
    work = tmp_path / "content"
    work.mkdir()
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=work, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(fake),
                                           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(env or {})})


def test_failed_clone_says_what_to_do(tmp_path):
    result = run_first_cell(tmp_path, 'echo "$@" > "$0.args"\n'
                                      "echo \"fatal: repository 'x' not found\" >&2\nexit 128\n")
    assert result.returncode != 0
    assert f"Could not clone {REPO_URL}" in result.stdout and "repository 'x' not found" in result.stdout
    for hint in ("REPO_URL", "CIFAKE_REPO_URL", "your fork", "Google Drive", "REPO_DIR", "run this cell again"):
        assert hint in result.stdout, hint
    assert "RuntimeError: could not clone" in result.stderr and "CalledProcessError" not in result.stderr
    assert (tmp_path / "bin" / "git.args").read_text().split()[-2:] == [REPO_URL, "cifake_lib_repo"]


def test_clone_url_and_folder_come_from_the_environment(tmp_path):
    fork = "https://github.com/someone/cifake_fork"
    result = run_first_cell(tmp_path, 'echo "$@" > "$0.args"\nexit 1\n',
                            {"CIFAKE_REPO_URL": fork, "CIFAKE_REPO_DIR": "my_copy"})
    assert f"Could not clone {fork}" in result.stdout
    assert (tmp_path / "bin" / "git.args").read_text().split()[-2:] == [fork, "my_copy"]


def test_set_url_rewrites_every_copy(tmp_path):
    root = tmp_path / "repo"
    for f in files_with_url(ROOT):
        dst = root / f.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(f.read_text())
    changed = set_url("https://github.com/someone/fork", root)
    assert {p.relative_to(root) for p in changed} == {f.relative_to(ROOT) for f in files_with_url(ROOT)}
    for f in changed:
        text = f.read_text()
        assert "someone/fork" in text and REPO_URL not in text, f
