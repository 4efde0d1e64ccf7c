"""Where CIFAKE comes from: resolve `--data SRC`, find the layout, list or fetch the files.

Sources (docs/architecture.md, "Data flow"): a folder in the Kaggle / authors' layout
`{train,test}/{REAL,FAKE}/*.jpg` (any nesting above it, such as `DATASET/`), a `.tar`/`.tar.gz`/`.zip` of such a folder (read in
memory, never unpacked to disk), the Hugging Face Hub mirror `hf[:REPO]`, Kaggle
`kaggle[:HANDLE]` (through `kagglehub`) and `github` (a shallow clone of the authors' repository).

This module only finds and reads bytes; decoding, caching and splitting live in `cifake_lib.data.load`.
The REAL/FAKE -> 0/1 mapping lives here, in `label_from_name`, and nowhere else.

Files inside a REAL/FAKE folder: hidden files (`.DS_Store`, macOS `._x.jpg` forks, anything
starting with a dot), `Thumbs.db`, `desktop.ini` and `__MACOSX/` folders are ignored. Anything else
that is not an image by its extension (`notes.txt`, a sub-folder) is reported as a bad entry,
exactly like an unreadable image: an error naming it, or skipped and listed with `skip_bad`.
Silently ignoring it could hide images saved under an unexpected name. The same holds beside
REAL/FAKE: `train/OTHER/`, a second spelling such as `train/fake` next to `train/FAKE`, a symbolic
link loop or a dangling link are bad entries, named in the error and skippable with `skip_bad`.

Archives are read whole or refused (`ArchiveError`, naming the archive and the damage): a zip
through its central directory (member CRCs checked as they are read), a tar (any compression)
header by header in non-stream mode, with its end-of-archive block checked, so a damaged header
or a cut download is an error instead of a silently shorter dataset. Only members under the
split/label folders with image extensions are read, and each is first checked against
`MAX_MEMBER_BYTES` and `MAX_RATIO` (archive bombs).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cifake_lib import LABEL_NAMES
from cifake_lib.core.errors import CifakeError
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
# Archive members: CIFAKE's images are ~1 KB; no image anyone loads here needs 50 MB, and images
# barely compress (JPEG, PNG), so a member that inflates 100-fold beyond 1 MB is a bomb.
MAX_MEMBER_BYTES = 50 * 2**20
MAX_RATIO = 100
RATIO_MIN_BYTES = 2**20
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
        for entry in sorted(os.scandir(parent), key=lambda e: e.name):
            if entry.name.lower() == name.lower() and _entry_kind(entry) == "dir":
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
            nxt += [Path(e.path) for e in entries if not is_ignored(e.name) and e.name.upper() not in LABEL_NAMES
                    and _entry_kind(e) == "dir"]
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


def link_problem(path: str | os.PathLike) -> str:
    """Why a path that cannot be followed fails: a link loop, a dangling link, or the OS's reason."""
    path = os.fspath(path)
    try:
        os.stat(path)
    except OSError as e:
        target = f" -> {os.readlink(path)}" if os.path.islink(path) else ""
        if e.errno == errno.ELOOP:
            return f"symbolic link loop{target}: it never reaches a file; fix or remove the link"
        if e.errno == errno.ENOENT and target:
            return f"dangling symbolic link{target}: its target does not exist; fix or remove the link"
        return f"cannot be read ({e.strerror or e})"
    return "cannot be read"


def _entry_kind(e: os.DirEntry) -> str:
    """"dir", "file" or "bad" (a link loop, a dangling link or an unreadable entry) for a scandir entry."""
    try:
        if e.is_dir():
            return "dir"
        if e.is_file():
            return "file"
    except OSError:
        return "bad"
    return "bad" if e.is_symlink() else "other"


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
            try:
                st = e.stat()  # follows links: a loop or a dangling link raises here
            except OSError:
                bad.append((e.path, link_problem(e.path)))
                continue
            if dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS and not stat.S_ISDIR(st.st_mode):
                rows.append((prefix + name, label, e.path))
                sig.append(f"{prefix}{name}\t{st.st_size}\t{st.st_mtime_ns}")
            elif stat.S_ISDIR(st.st_mode):
                bad.append((e.path, "unexpected folder; expected image files only"))
            else:
                bad.append((e.path, f"not an image file by its extension; expected one of "
                                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}"))
    return rows, sig, bad


def _scan_split_dir(split_dir: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """The REAL and FAKE folders of one split folder, and every other entry in it as a bad entry.

    A second spelling of a label folder (`FAKE` and `fake`) is bad too: which one holds the
    images is the user's call, not ours.
    """
    found: dict[str, list[os.DirEntry]] = {}
    bad: list[tuple[str, str]] = []
    with os.scandir(split_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if is_ignored(e.name):
            continue
        kind = _entry_kind(e)
        if kind == "bad":
            bad.append((e.path, link_problem(e.path)))
        elif kind == "dir" and e.name.upper() in LABEL_NAMES:
            found.setdefault(e.name.upper(), []).append(e)
        else:
            bad.append((e.path, f"unexpected beside REAL and FAKE; {split_dir.name}/ holds only the REAL and "
                                "FAKE folders (move or remove it)"))
    dirs = {}
    for label, hits in found.items():
        keep = next((e for e in hits if e.name == label), hits[0])
        dirs[label] = Path(keep.path)
        bad += [(e.path, f"a second {label} folder ({keep.name} and {e.name} differ only in case); merge them "
                         "into one") for e in hits if e is not keep]
    return dirs, bad


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
        label_dirs, split_bad = _scan_split_dir(split_dir)
        bad += split_bad
        rows: list[tuple[str, int, str | bytes]] = []
        for label_name in LABEL_NAMES:
            label_dir = label_dirs.get(label_name)
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


class ArchiveError(CifakeError):
    """A damaged, cut or oversized archive (CLI exit 2); the message names it and the damage."""


@dataclass
class _Member:
    """One archive member from the archive's index; `read()` returns its bytes, bounded."""

    name: str
    kind: str  # "dir", "file" or "other" (links, devices)
    size: int  # declared (uncompressed) size
    read: Callable[[], bytes]


def _damaged(path: Path, what: str) -> ArchiveError:
    return ArchiveError(f"{path}: damaged archive: {what}. Nothing was loaded from it: download or copy "
                        "it again (compare its size and checksum with the original)")


def _check_member_size(path: Path, name: str, size: int, packed: int | None) -> None:
    """Refuse a member whose declared size or compression ratio is beyond what an image needs."""
    if size > MAX_MEMBER_BYTES:
        raise ArchiveError(f"{path}:{name}: declares {size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte "
                           "limit for one image (an archive bomb?); remove it from the archive")
    if packed is not None and size > RATIO_MIN_BYTES and size > MAX_RATIO * max(packed, 1):
        raise ArchiveError(f"{path}:{name}: compressed {size / max(packed, 1):,.0f}:1 ({packed:,} -> {size:,} "
                           f"bytes), over the {MAX_RATIO}:1 limit (an archive bomb?); remove it from the archive")


def _zip_members(path: Path) -> Iterator[_Member]:
    """Members from the zip's central directory; CRCs are checked as each member is read."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _damaged(path, f"its zip central directory cannot be read ({e}); the file is probably cut "
                             "short (an incomplete download)") from None
    with zf:
        for info in zf.infolist():
            def read(info: zipfile.ZipInfo = info) -> bytes:
                _check_member_size(path, info.filename, info.file_size, info.compress_size)
                try:
                    with zf.open(info) as f:
                        return f.read(info.file_size + 1)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
                    raise _damaged(path, f"member {info.filename} cannot be read ({e})") from None

            kind = "dir" if info.is_dir() else "other" if stat.S_ISLNK(info.external_attr >> 16) else "file"
            yield _Member(info.filename.rstrip("/"), kind, info.file_size, read)


def _packed_position(tf: tarfile.TarFile) -> Callable[[], int] | None:
    """How many compressed bytes of the archive have been read (None for a plain .tar).

    The gzip, bz2 and xz readers keep the file they decompress as `fileobj` or `_fp`.
    """
    inner = getattr(tf.fileobj, "fileobj", None) or getattr(tf.fileobj, "_fp", None)
    return inner.tell if inner is not None and hasattr(inner, "tell") else None


def _read_tar_member(path: Path, tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    """A member's bytes in 1 MB pieces, refusing it as soon as its compression ratio gives it away."""
    _check_member_size(path, m.name, m.size, None)
    packed = _packed_position(tf)
    f = tf.extractfile(m)
    assert f is not None, m.name
    start, parts, got = packed() if packed else 0, [], 0
    while got < m.size:
        parts.append(f.read(min(1 << 20, m.size - got)))
        if not parts[-1]:
            raise EOFError(f"member {m.name} ends early")
        got += len(parts[-1])
        if packed:
            _check_member_size(path, m.name, got, packed() - start)
    return b"".join(parts)


def _read_tar_safely(path: Path, tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    try:
        return _read_tar_member(path, tf, m)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise _damaged(path, f"member {m.name} cannot be read: {e or type(e).__name__} (cut short or "
                             "corrupt)") from None


def _check_tar_end(path: Path, tf: tarfile.TarFile, count: int, last: str | None) -> None:
    """After the last header, tar has a zero block (end of archive): anything else is damage."""
    f, offset = tf.fileobj, tf.offset
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    after = f"after {count:,} member(s), the last {last}" if last else "before any member"
    if len(block) < tarfile.BLOCKSIZE:
        raise _damaged(path, f"it ends at byte {offset:,} of its tar data, {after}, without the end-of-archive "
                             "marker: the file is cut short (an incomplete download?)")
    if block.count(0) != tarfile.BLOCKSIZE:
        raise _damaged(path, f"the member header at byte {offset:,} of its tar data, {after}, is not valid; "
                             "the members from there on cannot be read")
    while f.read(1 << 20):  # to the end: a compressed stream checks its own length and CRC there
        pass


def _tar_members(path: Path) -> Iterator[_Member]:
    """Members of a tar (any compression) through its headers, with the end of the archive checked."""
    try:
        tf = tarfile.open(path, "r:*")  # not stream mode: it would stop silently at a damaged header
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if path.suffix.lower() in (".tar", ".gz", ".tgz", ".bz2", ".xz", ".zip") or path.name.endswith(".tar.gz"):
            raise _damaged(path, f"it cannot be opened as a .tar/.tar.gz/.zip archive ({e})") from None
        raise ArchiveError(f"{path}: not a folder or a .tar/.tar.gz/.zip archive ({e})") from None
    count, last = 0, None
    with tf:
        try:
            while (m := tf.next()) is not None:
                tf.members.clear()  # the index of 120,000 TarInfos would cost ~100 MB
                kind = "dir" if m.isdir() else "file" if m.isfile() else "other"
                yield _Member(m.name.rstrip("/"), kind, m.size, lambda m=m: _read_tar_safely(path, tf, m))
                count, last = count + 1, m.name
            _check_tar_end(path, tf, count, last)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            where = f"after {count:,} member(s), the last {last}" if last else "at its first member"
            raise _damaged(path, f"{where}: {e or type(e).__name__} (cut short or corrupt)") from None


def _archive_members(path: Path) -> Iterator[_Member]:
    """Every member of a zip or tar (any compression), from the archive's own index."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04" or zipfile.is_zipfile(path):
        yield from _zip_members(path)
    else:
        yield from _tar_members(path)


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


@dataclass
class _ArchiveLayout:
    """What one pass over an archive's members found, per layout root (the path above train/test)."""

    rows: dict[str, list[tuple[str, str, str, bytes]]] = field(default_factory=dict)  # split, LABEL dirs, file
    counts: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)  # (split, LABEL) -> members
    spellings: dict[tuple[str, ...], set[str]] = field(default_factory=dict)  # (root, split[, LABEL]) -> names
    beside: dict[str, set[str]] = field(default_factory=dict)  # root -> "train/OTHER" entries
    bad: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def _note_beside(layout: _ArchiveLayout, parts: tuple[str, ...]) -> None:
    """Record `train/OTHER` (anything beside REAL/FAKE in a split folder) under each possible root."""
    for i in range(len(parts) - 1):
        if parts[i].lower() in SPLIT_NAMES and parts[i + 1].upper() not in LABEL_NAMES:
            layout.beside.setdefault("/".join(parts[:i]), set()).add(f"{parts[i]}/{parts[i + 1]}")


def _add_member(layout: _ArchiveLayout, path: Path, member: _Member) -> None:
    parts = PurePosixPath(member.name).parts
    if _skip_member(member.name):
        return
    hit = _find_split_label(parts)
    if hit is None:
        _note_beside(layout, parts)
        return  # README, licence, anything outside the image folders: never read
    root = "/".join(parts[:hit])
    split, label_dir, rest = parts[hit], parts[hit + 1], parts[hit + 2:]
    layout.spellings.setdefault((root, split.lower()), set()).add(split)
    layout.spellings.setdefault((root, split.lower(), label_dir.upper()), set()).add(label_dir)
    counts = layout.counts.setdefault(root, {})
    key = (split.lower(), label_dir.upper())
    counts[key] = counts.get(key, 0) + (1 if rest else 0)
    if not rest or (member.kind == "dir" and len(rest) == 1):
        return  # the image folder itself, or a sub-folder (its files are reported)
    where, bad = f"{path}:{member.name}", layout.bad.setdefault(root, [])
    if len(rest) > 1:
        bad.append((where, "unexpected folder inside an image folder; expected image files only"))
    elif member.kind != "file":
        bad.append((where, "a link or special file inside an image folder; expected image files only"))
    elif not is_image_name(rest[0]):
        bad.append((where, f"not an image file by its extension; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))}"))
    else:
        layout.rows.setdefault(root, []).append((split, label_dir, rest[0], member.read()))


def _layout_bad(layout: _ArchiveLayout, path: Path, root: str) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
    """Bad entries of the chosen root (unexpected entries beside REAL/FAKE, folders spelled twice)
    and the (split, label) folder spellings whose images are left out."""
    prefix = f"{path}:{root + '/' if root else ''}"
    bad = list(layout.bad.get(root, []))
    bad += [(prefix + x, "unexpected beside REAL and FAKE; a split folder holds only REAL and FAKE (move or "
                         "remove it)") for x in sorted(layout.beside.get(root, ()))]
    dropped: set[tuple[str, str]] = set()
    for key, names in sorted(layout.spellings.items()):
        if key[0] != root or len(names) < 2:
            continue
        wanted = key[1] if len(key) == 2 else key[2]
        keep = wanted if wanted in names else sorted(names)[0]
        for other in sorted(names - {keep}):
            shown = other if len(key) == 2 else f"{key[1]}/{other}"
            bad.append((prefix + shown, f"a second folder for the same images ({keep} and {other} differ only in "
                                        "case); merge them into one"))
            dropped |= {(other, "*")} if len(key) == 2 else {(key[1], other)}
    return bad, dropped


def read_archive(path: str | os.PathLike, *, progress: bool = True) -> Listing:
    """Read every image of a CIFAKE .tar/.tar.gz/.zip into memory (no unpacking to disk).

    Only members under split/label folders with image extensions are read, each checked against
    `MAX_MEMBER_BYTES` and `MAX_RATIO` first; a damaged or cut archive raises `ArchiveError`.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    layout = _ArchiveLayout()
    with tqdm(desc=f"reading {path.name}", unit=" files", disable=not progress) as bar:
        try:
            for member in _archive_members(path):
                bar.update()
                _add_member(layout, path, member)
        except MemoryError:
            raise ArchiveError(f"{path}: out of memory while reading the archive ({bar.n:,} members read); "
                               "unpack it and pass the folder, or free memory") from None
    if not layout.counts:
        raise FileNotFoundError(
            f"{path}: no CIFAKE layout in this archive; expected {LAYOUT}, at its top or inside one folder "
            "such as DATASET/"
        )
    if len(layout.counts) > 1:
        raise ValueError(f"{path}: several CIFAKE layouts in this archive "
                         f"({', '.join(r + '/' for r in sorted(layout.counts))}); expected one")
    root, counts = next(iter(layout.counts.items()))
    where = f"{path}:{root + '/' if root else ''}"
    for split in SPLIT_NAMES:
        for label_name in LABEL_NAMES:
            if (split, label_name) not in counts:
                raise FileNotFoundError(f"{where}{split}/{label_name}: missing; expected {LAYOUT}")
            if counts[(split, label_name)] == 0:
                raise ValueError(f"{where}{split}/{label_name}: empty; expected the {split} {label_name} images")
    bad, dropped = _layout_bad(layout, path, root)
    rows: dict[str, list[tuple[str, int, str | bytes]]] = {split: [] for split in SPLIT_NAMES}
    for split, label_dir, name, blob in layout.rows.get(root, []):
        if (split, "*") in dropped or (split.lower(), label_dir) in dropped:
            continue
        rows[split.lower()].append((f"{split}/{label_dir}/{name}", label_from_name(label_dir), blob))
    for split in SPLIT_NAMES:
        rows[split].sort()
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
    from cifake_lib.core.network import offline_unless_hub_reachable

    try:
        with offline_unless_hub_reachable():  # no Hub: fail (or use the local cache) at once, not after 30 s
            dd = datasets.load_dataset(repo)
    except Exception as e:  # offline, unknown repo, auth, rate limit: many exception types, one message
        raise DataSourceError(
            f"could not load CIFAKE from the Hugging Face Hub (hf:{repo}): {type(e).__name__}: {e}. {HOW_TO_GET}"
        ) from e
    missing = [s for s in SPLIT_NAMES if s not in dd]
    if missing:
        raise DataSourceError(f"hf:{repo} has splits {sorted(dd)}, expected train and test")
    return dd
