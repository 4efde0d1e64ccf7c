"""Google Colab support: the repository URL (one place) and notebook set-up helpers.

`REPO_URL` below is the one place where the project's public address is written by hand.
Notebooks, `colab_setup.sh` and the README badges carry copies; after changing it, run

    python -m cifake_lib.app.colab set-url https://github.com/OWNER/REPO

which rewrites every copy (a test checks they agree).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# >>> The repository that the Colab badges and first cells clone. Publishing a copy elsewhere
# (a fork, a course's organisation): change it with `set-url` below. A user whose clone fails
# is told to set CIFAKE_REPO_URL / REPO_URL to a fork or to point REPO_DIR at a copy in Drive. <<<
REPO_URL = "https://github.com/cifake-lib/cifake_lib"
BRANCH = "main"

NOTEBOOKS = ("01_data", "02_zero_shot", "03_fine_tune", "04_analysis")


def in_colab() -> bool:
    return "google.colab" in sys.modules


def colab_badge_url(notebook: str, repo_url: str = REPO_URL, branch: str = BRANCH) -> str:
    """The Open-in-Colab link for `notebooks/<notebook>.ipynb`."""
    path = repo_url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{notebook}.ipynb"


def files_with_url(root: Path) -> list[Path]:
    """The files that carry a copy of REPO_URL."""
    files = [root / "README.md", root / "colab_setup.sh", root / "cifake_lib" / "app" / "colab.py"]
    files += sorted((root / "notebooks").glob("*.ipynb"))
    return [f for f in files if f.is_file()]


def set_url(new_url: str, root: Path | None = None) -> list[Path]:
    """Replace the current REPO_URL (and its Colab badge form) by `new_url` in every copy."""
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", new_url):
        raise ValueError(f"expected https://github.com/OWNER/REPO, got {new_url!r}")
    root = root or Path(__file__).resolve().parents[2]  # the repository: cifake_lib/app/colab.py
    old_path, new_path = REPO_URL.removeprefix("https://github.com/"), new_url.removeprefix("https://github.com/")
    changed = []
    for f in files_with_url(root):
        text = f.read_text(encoding="utf-8")
        new = text.replace(REPO_URL, new_url).replace(f"github/{old_path}/", f"github/{new_path}/")
        if new != text:
            f.write_text(new, encoding="utf-8")
            changed.append(f)
    return changed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "set-url":
        print("usage: python -m cifake_lib.app.colab set-url https://github.com/OWNER/REPO", file=sys.stderr)
        return 2
    for f in set_url(argv[1]):
        print(f"updated {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
