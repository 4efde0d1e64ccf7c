"""Where CIFAKE comes from: resolve `--data SRC`, find the layout, list or fetch the files.

Sources (see DESIGN.md): a folder in the Kaggle / authors' layout `{train,test}/{REAL,FAKE}/*.jpg`
(any nesting above it, such as `DATASET/`), a `.tar`/`.tar.gz`/`.zip` of such a folder (read in
memory, never unpacked to disk), the Hugging Face Hub mirror `hf[:REPO]`, Kaggle
`kaggle[:HANDLE]` (through `kagglehub`) and `github` (a shallow clone of the authors' repository).

This module only finds and reads bytes; decoding, caching and splitting live in `cifake_lib.data.load`.
The REAL/FAKE -> 0/1 mapping lives here, in `label_from_name`, and nowhere else.

Files inside a REAL/FAKE folder: hidden files (`.DS_Store`, macOS `._x.jpg` forks, anything
starting with a dot), `Thumbs.db`, `desktop.ini` and `__MACOSX/` folders are ignored. Anything else
that is not an image by its extension (`notes.txt`, a sub-folder) is reported as a bad entry,
exactly like an unreadable image: an error naming it, or skipped and listed with `skip_bad`.
Silently ignoring it could hide images saved under an unexpected name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cifake_lib import LABEL_NAMES
from cifake_lib.core.settings import (
    DEFAULT_HF_REPO,
    DEFAULT_KAGGLE_HANDLE,
    cache_root,
    default_data_source,
)

SPLIT_NAMES = ("train", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
GITHUB_REPO = "jordan-bird/CIFAKE-Real-and-AI-Generated-Synthetic-Images"
GITHUB_URL = f"https://github.com/{GITHUB_REPO}"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{DEFAULT_KAGGLE_HANDLE}"
HOW_TO_GET = (
    f"To get CIFAKE: download it from Kaggle ({KAGGLE_URL}), unpack it and pass the folder with "
    "--data DIR (or set CIFAKE_DATA=DIR); the downloaded .zip works as it is (--data cifake.zip). "
    f"Other sources: --data kaggle (needs `pip install kagglehub` and Kaggle credentials), "
    f"--data github (a git clone of {GITHUB_URL}), --data hf[:REPO] (needs the network)."
)
LAYOUT = "train/REAL, train/FAKE, test/REAL and test/FAKE folders of images (the Kaggle layout)"

# `<n>.jpg` is CIFAR class 0, `<n> (k).jpg` is class k-1 (see the sample's SOURCE.md).
_NAME_RE = re.compile(r"^\d+(?: \((\d+)\))?\.[A-Za-z]+$")


class DataSourceError(ValueError):
    """A source that cannot be reached or used (network, missing tool).

    A ValueError so that every `cifake` subcommand reports it as a user error, with the
    message, instead of a traceback.
    """


def label_from_name(name: str) -> int:
    """`REAL` -> 0, `FAKE` -> 1 (any case): the one place where label names become numbers."""
    key = str(name).strip().upper()
    if key not in LABEL_NAMES:
        raise ValueError(f"unknown label name {name!r}: expected one of {', '.join(LABEL_NAMES)}")
    return LABEL_NAMES.index(key)


def cifar_class_from_name(filename: str) -> int:
    """CIFAR-10 class from a CIFAKE file name: `12.jpg` -> 0, `12 (7).jpg` -> 6; -1 if unknown."""
    m = _NAME_RE.match(PurePosixPath(filename).name)
    if not m:
        return -1
    k = int(m.group(1) or 1)
    return k - 1 if 1 <= k <= 10 else -1


def is_ignored(name: str) -> bool:
    """Hidden files and OS clutter that never count as entries."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------
# Source resolution
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A resolved `--data` value. `kind` is folder, archive, hf, kaggle or github."""

    kind: str
    location: str  # absolute path, Hub repo, Kaggle handle or git URL

    @property
    def name(self) -> str:
        """What `CifakeData.source` reports: the absolute path, or `kind:location`."""
        if self.kind in ("folder", "archive"):
            return self.location
        if self.kind == "github":
            return "github"
        return f"{self.kind}:{self.location}"

    @property
    def is_remote(self) -> bool:
        return self.kind in ("hf", "kaggle", "github")

    @property
    def cache_name(self) -> str:
        """A stable folder name for this source's decoded-array cache."""
        digest = hashlib.sha256(f"{self.kind}\0{self.location}".encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.location).name or self.kind)[:40]
        return f"{self.kind}-{stem}-{digest}"


def resolve_source(data: str | os.PathLike | None = None) -> Source:
    """Turn a `--data` value into a Source; None means `$CIFAKE_DATA`, else `hf`.

    `hf`, `hf:REPO`, `kaggle`, `kaggle:HANDLE` and `github` name remote sources; anything else is a
    path (write `./hf` for a folder that happens to be called hf).
    """
    text = os.fspath(data) if data is not None else default_data_source()
    text = str(text).strip()
    if not text:
        raise ValueError(f"--data is empty: expected a folder, an archive, hf[:REPO], kaggle[:HANDLE] or github. {HOW_TO_GET}")
    scheme, _, rest = text.partition(":")
    if scheme == "hf":
        return Source("hf", rest or DEFAULT_HF_REPO)
    if scheme == "kaggle":
        return Source("kaggle", rest or DEFAULT_KAGGLE_HANDLE)
    if text == "github":
        return Source("github", GITHUB_URL)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source("folder", str(path.resolve()))
    if path.is_file():
        return Source("archive", str(path.resolve()))
    raise FileNotFoundError(
        f"--data {text}: no such folder or archive; expected a folder with {LAYOUT}, a .tar/.tar.gz/.zip "
        f"of one, hf[:REPO], kaggle[:HANDLE] or github. {HOW_TO_GET}"
    )


# ---------------------------------------------------------------------------
# Listings: what a local source holds, before decoding
# ---------------------------------------------------------------------------


@dataclass
class Listing:
    """The image files of one local source, per split, sorted by id.

    `files[split]` is a list of (id, label, item): `id` relative to the folder holding train/ and
    test/ (forward slashes), `item` a file path (str) or the file's bytes. `bad` lists entries that
    are not images, as (path, reason). `fingerprint` changes when any listed file changes.
    """

    root: str
    files: dict[str, list[tuple[str, int, str | bytes]]]
    bad: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""

    def __len__(self) -> int:
        return sum(len(v) for v in self.files.values())


def _match_dir(parent: Path, name: str) -> Path | None:
    """`parent/name`, matching the folder name case-insensitively (exact match first)."""
    exact = parent / name
    if exact.is_dir():
        return exact
    try:
        for entry in os.scandir(parent):
            if entry.name.lower() == name.lower() and entry.is_dir():
                return Path(entry.path)
    except OSError:
        return None
    return None


def find_layout_root(path: str | os.PathLike, max_depth: int = 3) -> Path:
    """The folder holding train/ and test/: `path` itself or the shallowest such sub-folder."""
    path = Path(path)
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder; expected a folder with {LAYOUT}")
    level = [path]
    for _ in range(max_depth + 1):
        found = [d for d in level if any(_match_dir(d, s) for s in SPLIT_NAMES)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(
                f"{path}: several CIFAKE layouts inside ({', '.join(str(d) for d in found)}); "
                "pass the one to use with --data"
            )
        nxt = []
        for d in level:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            # Never descend into image folders (tens of thousands of entries, no layout inside).
            nxt += [Path(e.path) for e in entries if e.is_dir() and not is_ignored(e.name)
                    and e.name.upper() not in LABEL_NAMES]
        level = nxt
    try:
        top = sorted(e.name for e in os.scandir(path) if not is_ignored(e.name))
    except OSError:
        top = []
    hint = ""
    if {n.upper() for n in top} & set(LABEL_NAMES):
        hint = " (REAL/FAKE found directly inside: put them in train/ and test/ sub-folders)"
    shown = ", ".join(top[:10]) + (", ..." if len(top) > 10 else "") if top else "nothing"
    raise FileNotFoundError(
        f"{path}: not in the CIFAKE layout{hint}: expected {LAYOUT}, directly in it or in a "
        f"sub-folder such as DATASET/; found: {shown}"
    )


def _scan_image_dir(folder: Path, prefix: str, label: int) -> tuple[list, list[str], list[tuple[str, str]]]:
    """Rows (id, label, path), fingerprint lines "id size mtime", bad entries of one REAL/FAKE folder.

    The hot loop of a warm load (120,000 entries): cheap string tests, one stat per image.
    """
    rows, sig, bad = [], [], []
    with os.scandir(folder) as it:
        for e in it:
            name = e.name
            if name[0] == "." or name.lower() in IGNORED_NAMES:
                continue
            dot = name.rfind(".")
            if dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS and not e.is_dir():
                st = e.stat()
                rows.append((prefix + name, label, e.path))
                sig.append(f"{prefix}{name}\t{st.st_size}\t{st.st_mtime_ns}")
            elif e.is_dir():
                bad.append((e.path, "unexpected folder; expected image files only"))
            else:
                bad.append((e.path, f"not an image file by its extension; expected one of "
                                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}"))
    return rows, sig, bad


def list_folder(path: str | os.PathLike) -> Listing:
    """List a local CIFAKE folder (or a folder above it); raise if the layout is wrong.

    The fingerprint hashes every image's id, size and modification time (and the bad entries),
    so changing, adding or removing any file changes it.
    """
    root = find_layout_root(path)
    files: dict[str, list[tuple[str, int, str | bytes]]] = {}
    bad: list[tuple[str, str]] = []
    sig: list[str] = []
    for split in SPLIT_NAMES:
        split_dir = _match_dir(root, split)
        if split_dir is None:
            raise FileNotFoundError(f"{root / split}: missing; expected {LAYOUT} inside {root}")
        rows: list[tuple[str, int, str | bytes]] = []
        for label_name in LABEL_NAMES:
            label_dir = _match_dir(split_dir, label_name)
            if label_dir is None:
                raise FileNotFoundError(
                    f"{split_dir / label_name}: missing; expected {split}/REAL and {split}/FAKE folders of images"
                )
            r, s, b = _scan_image_dir(label_dir, f"{split_dir.name}/{label_dir.name}/", label_from_name(label_name))
            if not r and not b:
                raise ValueError(f"{label_dir}: empty; expected the {split} {label_name} images (*.jpg)")
            rows += r
            sig += s
            bad += b
        rows.sort()
        files[split] = rows
    bad.sort()
    sig.sort()
    sig += [f"bad\t{p}" for p, _ in bad]
    return Listing(str(root), files, bad, hashlib.sha256("\n".join(sig).encode()).hexdigest())


# ---------------------------------------------------------------------------
# Archives, read in memory
# ---------------------------------------------------------------------------


def _archive_members(path: Path) -> Iterator[tuple[str, bool, bytes | None]]:
    """(name, is_folder, bytes) for every member of a zip or tar (any compression).

    Bytes are None for folders and for hidden or OS-clutter members, which are never read.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                skip = info.is_dir() or _skip_member(info.filename)
                yield info.filename.rstrip("/"), info.is_dir(), None if skip else zf.read(info)
        return
    try:
        tf = tarfile.open(path, "r|*")  # streaming: one pass, any compression
    except tarfile.TarError as e:
        raise ValueError(f"{path}: not a folder or a .tar/.tar.gz/.zip archive ({e})") from None
    with tf:
        for m in tf:
            tf.members = []  # streaming mode keeps every TarInfo otherwise (~100 MB for CIFAKE)
            if m.isdir():
                yield m.name.rstrip("/"), True, None
            elif m.isfile():
                f = None if _skip_member(m.name) else tf.extractfile(m)
                yield m.name, False, f.read() if f is not None else None


def _skip_member(name: str) -> bool:
    return any(is_ignored(part) for part in PurePosixPath(name).parts)


def archive_fingerprint(path: str | os.PathLike) -> str:
    """Identity of an archive without reading it: absolute path, size, modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}\t{st.st_size}\t{st.st_mtime_ns}"


def _find_split_label(parts: tuple[str, ...]) -> int | None:
    """Index i with parts[i] = train|test and parts[i+1] = REAL|FAKE (any case), else None."""
    for i in range(len(parts) - 1):
        if parts[i].lower() in SPLIT_NAMES and parts[i + 1].upper() in LABEL_NAMES:
            return i
    return None


def read_archive(path: str | os.PathLike, *, progress: bool = True) -> Listing:
    """Read every image of a CIFAKE .tar/.tar.gz/.zip into memory (no unpacking to disk)."""
    from tqdm.auto import tqdm

    path = Path(path)
    files: dict[str, dict[str, list[tuple[str, int, str | bytes]]]] = {}  # root -> split -> rows
    entries: dict[str, dict[tuple[str, str], int]] = {}  # root -> (split, LABEL) -> members seen
    bad: list[tuple[str, str]] = []
    with tqdm(desc=f"reading {path.name}", unit=" files", disable=not progress) as bar:
        for name, is_dir, blob in _archive_members(path):
            bar.update()
            parts = PurePosixPath(name).parts
            if _skip_member(name):
                continue
            hit = _find_split_label(parts)
            if hit is None:
                continue  # README, licence, anything outside the image folders
            root = "/".join(parts[:hit])
            split, label_dir, rest = parts[hit].lower(), parts[hit + 1], parts[hit + 2:]
            counts = entries.setdefault(root, {})
            key = (split, label_dir.upper())
            counts[key] = counts.get(key, 0) + (1 if rest else 0)
            if not rest or (is_dir and len(rest) == 1):
                continue  # the image folder itself, or a sub-folder (its files are reported)
            where = f"{path}:{name}"
            if len(rest) > 1:
                bad.append((where, "unexpected folder inside an image folder; expected image files only"))
            elif not is_image_name(rest[0]):
                bad.append((where, f"not an image file by its extension; expected one of "
                                   f"{', '.join(sorted(IMAGE_EXTENSIONS))}"))
            else:
                rid = f"{parts[hit]}/{label_dir}/{rest[0]}"
                files.setdefault(root, {}).setdefault(split, []).append((rid, label_from_name(label_dir), blob))
    if not entries:
        raise FileNotFoundError(
            f"{path}: no CIFAKE layout in this archive; expected {LAYOUT}, at its top or inside one folder "
            "such as DATASET/"
        )
    if len(entries) > 1:
        raise ValueError(f"{path}: several CIFAKE layouts in this archive "
                         f"({', '.join(r + '/' for r in sorted(entries))}); expected one")
    root, counts = next(iter(entries.items()))
    where = f"{path}:{root + '/' if root else ''}"
    for split in SPLIT_NAMES:
        for label_name in LABEL_NAMES:
            if (split, label_name) not in counts:
                raise FileNotFoundError(f"{where}{split}/{label_name}: missing; expected {LAYOUT}")
            if counts[(split, label_name)] == 0:
                raise ValueError(f"{where}{split}/{label_name}: empty; expected the {split} {label_name} images")
    rows = files.get(root, {})
    for split in SPLIT_NAMES:
        rows.setdefault(split, []).sort()
    # `root` here is what a member's id is appended to when naming it: "c.zip:DATASET/".
    return Listing(f"{path}:{root}/" if root else f"{path}:", rows, sorted(bad), archive_fingerprint(path))


# ---------------------------------------------------------------------------
# Remote sources: fetched to a local folder (Kaggle, GitHub) or loaded with `datasets` (Hub)
# ---------------------------------------------------------------------------


def fetch_kaggle(handle: str = DEFAULT_KAGGLE_HANDLE) -> Path:
    """Download (or reuse kagglehub's copy of) a Kaggle dataset; returns its local folder."""
    try:
        import kagglehub
    except ImportError:
        raise DataSourceError(
            f"--data kaggle:{handle} needs the kagglehub package: pip install kagglehub "
            f"(or pip install 'cifake_lib[kaggle]'), and Kaggle credentials. {HOW_TO_GET}"
        ) from None
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as e:  # network, credentials, unknown handle: all end the same way for the user
        raise DataSourceError(f"could not download kaggle:{handle} ({type(e).__name__}: {e}). {HOW_TO_GET}") from e


def fetch_github(url: str = GITHUB_URL, dest: str | os.PathLike | None = None) -> Path:
    """Shallow-clone the authors' repository (once) and return its `DATASET/` folder (or the clone)."""
    dest = Path(dest) if dest is not None else cache_root() / "sources" / "github" / Path(url).name
    if not (dest / ".git").is_dir():
        git = shutil.which("git")
        if git is None:
            raise DataSourceError(f"--data github needs git on PATH to clone {url}. {HOW_TO_GET}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Clone beside the destination, then rename: an interrupted clone never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            subprocess.run([git, "clone", "--depth", "1", "--quiet", url, str(tmp)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            os.replace(tmp, dest)
        except subprocess.CalledProcessError as e:
            raise DataSourceError(f"git clone {url} failed: {e.stderr.strip()}. {HOW_TO_GET}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / "DATASET" if (dest / "DATASET").is_dir() else dest


def load_hf_dataset(repo: str = DEFAULT_HF_REPO):
    """`datasets.load_dataset(repo)` with the train and test splits, or a DataSourceError saying why not."""
    try:
        import datasets
    except ImportError:
        raise DataSourceError(f"--data hf:{repo} needs the datasets package (pip install datasets). {HOW_TO_GET}") from None
    try:
        dd = datasets.load_dataset(repo)
    except Exception as e:  # offline, unknown repo, auth, rate limit: many exception types, one message
        raise DataSourceError(
            f"could not load CIFAKE from the Hugging Face Hub (hf:{repo}): {type(e).__name__}: {e}. {HOW_TO_GET}"
        ) from e
    missing = [s for s in SPLIT_NAMES if s not in dd]
    if missing:
        raise DataSourceError(f"hf:{repo} has splits {sorted(dd)}, expected train and test")
    return dd
