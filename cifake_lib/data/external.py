"""External test sets: any labelled image collection, read at its own size, for `cifake evaluate`.

    load_external(SRC) -> ExternalSet(items, labels, ids, label_names)

SRC is
- a folder whose images sit in label folders, `REAL/` and `FAKE/` (no split level), or in split
  folders (`test/REAL`, ...; the `split` argument picks one, default test);
- a `.zip` or `.tar` (any compression) of such a folder;
- `hf:REPO` (a Hugging Face dataset), a `.parquet` file, a folder of parquet files, or a folder
  written by `datasets.save_to_disk`, read with `datasets`; the image and label columns are found
  by feature type unless named (`image_column`, `label_column`).

Labels are mapped by name, never by position: without `fake_labels` every label name must be
REAL or FAKE (any case); with it, the names listed are FAKE (1) and every other name is REAL (0).
A listed name that is not found, a name matched twice, or a set with one class only is an error
that lists the names found.

Images are not resized here. CIFAKE is decoded to 32x32 because every CIFAKE image is 32x32;
an external set's images keep their own size (very large ones are reduced as `predict` reduces
them) and go to the detector as they are, so that its own preprocessing (CLIP's resize and
centre crop, the CNN's resize) brings them to its input, exactly as `cifake predict` does for a
user's files. `native_sizes` counts the sizes found, for metrics.json.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cifake_lib import LABEL_NAMES
from cifake_lib.core.errors import CifakeError
from cifake_lib.data.decode import decode_image_info
from cifake_lib.data.sources import _archive_members, is_ignored, is_image_name

__all__ = ["ExternalSet", "ExternalDataError", "decode_chunks", "is_external_source", "load_external",
           "map_label_names", "set_name"]

EXTERNAL_SPLITS = ("train", "val", "validation", "valid", "test")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
REDUCE_ABOVE, REDUCE_TO = 2048, 1024  # as methods.predict: huge images are box-reduced first


class ExternalDataError(CifakeError):
    """An external set that cannot be used as given (layout, labels, columns)."""


@dataclass
class ExternalSet:
    """A labelled collection: `items` (paths or encoded bytes), labels (1 = FAKE), ids."""

    source: str
    items: list[str | bytes]
    labels: np.ndarray
    ids: list[str]
    label_names: dict[str, list[str]]  # {"REAL": [names], "FAKE": [names]} as found in the source
    split: str | None = None  # the split folder or dataset split read, if the source has splits
    native_sizes: Counter = field(default_factory=Counter)  # "WxH" -> n, filled by decode_chunks
    native_modes: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.labels)


def set_name(source: str) -> str:
    """A short folder-safe name for a source: `hf:org/repo` -> `org_repo`, `/x/y.zip` -> `y`."""
    text = source[3:] if source.startswith("hf:") else Path(source.rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES + (".parquet",):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
            break
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text) or "external"


def map_label_names(names: Sequence[str], fake_labels: Sequence[str] | None, where: str) -> dict[str, int]:
    """{label name: 0 or 1} by name (see the module docstring); raises ExternalDataError."""
    found = sorted({str(n) for n in names})
    shown = ", ".join(repr(n) for n in found) or "none"
    if not fake_labels:
        upper = {n: n.strip().upper() for n in found}
        bad = [n for n, u in upper.items() if u not in LABEL_NAMES]
        if bad:
            raise ExternalDataError(f"{where}: label name(s) {', '.join(map(repr, bad))} are neither REAL nor "
                                    f"FAKE (names found: {shown}); pass --fake-labels NAME[,NAME] to say which "
                                    "names mean FAKE")
        mapping = {n: LABEL_NAMES.index(u) for n, u in upper.items()}
    else:
        mapping = dict.fromkeys(found, 0)
        for want in fake_labels:
            hits = [n for n in found if n.strip().casefold() == str(want).strip().casefold()]
            if not hits:
                raise ExternalDataError(f"{where}: --fake-labels {want!r} is not a label of this set (names "
                                        f"found: {shown})")
            if len(hits) > 1:
                raise ExternalDataError(f"{where}: --fake-labels {want!r} is ambiguous, it matches "
                                        f"{', '.join(map(repr, hits))} (names found: {shown})")
            mapping[hits[0]] = 1
    if len(set(mapping.values())) < 2:
        side = LABEL_NAMES[next(iter(mapping.values()))] if mapping else "no"
        raise ExternalDataError(f"{where}: every label maps to {side} (names found: {shown}); an external "
                                "test set needs REAL and FAKE images")
    return mapping


# ---------------------------------------------------------------------------
# File trees: folders and archives
# ---------------------------------------------------------------------------


def _folder_files(root: Path) -> Iterator[tuple[tuple[str, ...], str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        rel = Path(dirpath).relative_to(root).parts
        for f in sorted(filenames):
            if not is_ignored(f) and is_image_name(f):
                yield (*rel, f), os.path.join(dirpath, f)


def _archive_files(path: Path, *, read: bool = True) -> Iterator[tuple[tuple[str, ...], bytes | None]]:
    """(path parts, bytes) of the archive's image members; bytes are read while the archive is open."""
    for m in _archive_members(path):
        parts = PurePosixPath(m.name).parts
        if m.kind == "file" and is_image_name(m.name) and not any(is_ignored(p) for p in parts):
            yield parts, (m.read() if read else None)


def _tree(files: Iterator[tuple[tuple[str, ...], Any]], where: str, split: str) -> tuple[list[Any], list[str], list[str], str | None]:
    """(items, label names, ids, split read) of a file tree: a file's label is its folder's name;
    when a split folder sits above the label folders, only `split` is kept."""
    rows = [(parts, item) for parts, item in files if len(parts) >= 2]
    if not rows:
        raise ExternalDataError(f"{where}: no image files in label folders (expected REAL/ and FAKE/, "
                                "optionally under split folders such as test/)")
    splits = {parts[-3].lower() for parts, _ in rows if len(parts) >= 3 and parts[-3].lower() in EXTERNAL_SPLITS}
    chosen = None
    if splits:
        if split.lower() not in splits:
            raise ExternalDataError(f"{where}: no {split!r} split folder (split folders found: "
                                    f"{', '.join(sorted(splits))}); pass --split")
        chosen = split.lower()
        rows = [(p, it) for p, it in rows if len(p) >= 3 and p[-3].lower() == chosen]
    items = [it for _, it in rows]
    return items, [p[-2] for p, _ in rows], ["/".join(p) for p, _ in rows], chosen


# ---------------------------------------------------------------------------
# Tables: the Hub, parquet, save_to_disk
# ---------------------------------------------------------------------------


def _open_table(source: str, split: str) -> tuple[Any, str | None]:
    """A `datasets.Dataset` for one split of a table source, and the split's name (if any)."""
    import datasets

    path = Path(source)
    try:
        if source.startswith("hf:"):
            dd = datasets.load_dataset(source[3:])
        elif path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            dd = datasets.load_from_disk(str(path))
        else:
            files = sorted(map(str, path.rglob("*.parquet"))) if path.is_dir() else [str(path)]
            dd = datasets.load_dataset("parquet", data_files=files)
    except (OSError, ValueError, ConnectionError) as e:
        raise ExternalDataError(f"{source}: cannot read the dataset ({type(e).__name__}: {e})") from None
    if isinstance(dd, datasets.Dataset):
        return dd, None
    names = list(dd)
    if len(names) == 1:
        return dd[names[0]], names[0]
    if split not in names:
        raise ExternalDataError(f"{source}: no split {split!r} (splits: {', '.join(names)}); pass --split")
    return dd[split], split


def _column(ds: Any, given: str | None, wanted: type, what: str, flag: str, where: str) -> str:
    feats = ds.features
    if given:
        if given not in feats:
            raise ExternalDataError(f"{where}: no column {given!r} ({flag}; columns: {', '.join(feats)})")
        return given
    found = [k for k, f in feats.items() if isinstance(f, wanted)]
    if len(found) != 1:
        raise ExternalDataError(f"{where}: {'no' if not found else 'more than one'} {what} column "
                                f"(columns: {', '.join(feats)}); pass {flag}")
    return found[0]


def _table(source: str, split: str, image_column: str | None, label_column: str | None,
           ) -> tuple[list[Any], list[str], list[str], str | None]:
    import datasets

    ds, chosen = _open_table(source, split)
    where = source + (f" ({chosen})" if chosen else "")
    image_col = _column(ds, image_column, datasets.Image, "image", "--image-column", where)
    label_col = _column(ds, label_column, datasets.ClassLabel, "label", "--label-column", where)
    feature = ds.features[label_col]
    ds = ds.cast_column(image_col, datasets.Image(decode=False))
    raw = ds[label_col]
    names = [feature.int2str(int(v)) if isinstance(feature, datasets.ClassLabel) else str(v) for v in raw]
    cells = ds[image_col]
    items = [c.get("bytes") or c.get("path") or b"" for c in cells]
    return items, names, [str(i) for i in range(len(items))], chosen


# ---------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------


def _is_table(source: str) -> bool:
    if source.startswith("hf:"):
        return True
    path = Path(source)
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if path.is_dir():
        return ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
                or (any(path.rglob("*.parquet")) and not any(path.rglob("*.jpg")) and not any(path.rglob("*.png"))))
    return False


def _has_split_level(parts_list: Iterator[tuple[str, ...]]) -> bool:
    return any(len(p) >= 3 and p[-3].lower() in EXTERNAL_SPLITS and p[-2].upper() in LABEL_NAMES
               for p in parts_list)


def is_external_source(source: str | os.PathLike) -> bool:
    """True for what only `load_external` reads: a table other than CIFAKE's own Hub mirror, or a
    folder or archive whose REAL/ and FAKE/ folders have no split folder above them.

    A collection with split folders (`test/REAL`, ...) reads as CIFAKE (32x32) unless the caller
    asks for `load_external` (`cifake evaluate --external`).
    """
    from cifake_lib.data.sources import DEFAULT_HF_REPO

    text = os.fspath(source)
    if text in ("hf", "kaggle", "github") or text.startswith("kaggle:"):
        return False
    if text.startswith("hf:"):
        return text[3:] != DEFAULT_HF_REPO
    if _is_table(text):
        return True
    path = Path(text).expanduser()
    if path.is_dir():
        return not _has_split_level(parts for parts, _ in _folder_files(path))
    if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return not _has_split_level(parts for parts, _ in _archive_files(path, read=False))
    return False


def load_external(source: str | os.PathLike, *, split: str = "test", image_column: str | None = None,
                  label_column: str | None = None, fake_labels: Sequence[str] | None = None) -> ExternalSet:
    """Read an external labelled collection (see the module docstring); images stay encoded."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if _is_table(text):
        items, names, ids, chosen = _table(text, split, image_column, label_column)
        text = text if text.startswith("hf:") else str(path.resolve())
    elif path.is_dir():
        items, names, ids, chosen = _tree(_folder_files(path), text, split)
        text = str(path.resolve())
    elif path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        items, names, ids, chosen = _tree(_archive_files(path), text, split)
        text = str(path.resolve())
    else:
        raise ExternalDataError(f"{text}: not an external set (expected a folder with REAL/ and FAKE/, a "
                                ".zip/.tar of one, a .parquet file or folder, or hf:REPO)")
    mapping = map_label_names(names, fake_labels, text)
    by_label: dict[str, list[str]] = {"REAL": [], "FAKE": []}
    for name, label in sorted(mapping.items()):
        by_label[LABEL_NAMES[label]].append(name)
    labels = np.array([mapping[n] for n in names], np.int64)
    return ExternalSet(text, items, labels, ids, by_label, chosen)


def decode_chunks(ext: ExternalSet, chunk: int = 256) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(row indices, images at their own size) per chunk; counts sizes and modes into `ext`.

    An unreadable image is an error naming it: a test set's images are all scored or none.
    """
    for start in range(0, len(ext), chunk):
        images = []
        for i in range(start, min(start + chunk, len(ext))):
            item = ext.items[i]
            name = item if isinstance(item, str) else f"{ext.source}#{ext.ids[i]}"
            im, size, mode = decode_image_info(item, name, reduce_above=REDUCE_ABOVE, reduce_to=REDUCE_TO)
            ext.native_sizes[size] += 1
            ext.native_modes[mode] += 1
            images.append(im)
        yield np.arange(start, start + len(images)), images
