"""CIFAKE in memory: decode once, cache, subset, split, audit.

    load_cifake(SRC) -> CifakeData(train, val, test: Split)

Every image is decoded once, in parallel, by the one image decoder (`cifake_lib.data.decode`,
shared with `predict`) into one uint8 array (N, 32, 32, 3) with its label (1 = FAKE), CIFAR-10
class (-1 unknown) and id. The arrays are cached (`cifake_lib.data.cache`: checksummed, verified
on every warm load) under `fileio.cache_root()/data/`, keyed by the source's identity (folder:
path plus a hash of file names, sizes and modification times; archive: path, size and
modification time; Hub, Kaggle, GitHub: the repository or handle, so a warm load needs no
network), so the second load of the full 120,000 images takes about a second. Files that failed
to decode are tried again on every warm load: a failure is not cached as a fact. Subsets and the
validation split are seeded and stratified by label and CIFAR class; validation is carved from
train, never from test.

Images that are not 32x32 RGB are converted to RGB and resized to 32x32 (bicubic, no crop);
`CifakeData.formats` reports the sizes and modes found. A source whose files are named like
CIFAKE's but that holds fewer images than CIFAKE gets a warning (`CifakeData.warnings`). Where
sources are found and read: `cifake_lib.data.sources`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib import CIFAR_CLASSES, LABEL_NAMES
from cifake_lib.core.settings import cache_root
from cifake_lib.data.cache import read_arrays, write_arrays
from cifake_lib.data.decode import ImageDecodeError, decode_image_info
from cifake_lib.data.sources import (
    SPLIT_NAMES,
    DataSourceError,
    Listing,
    Source,
    archive_fingerprint,
    cifar_class_from_name,
    fetch_github,
    fetch_kaggle,
    label_from_name,
    list_folder,
    load_hf_dataset,
    read_archive,
    resolve_source,
)

__all__ = [
    "CifakeData",
    "DataSourceError",
    "Split",
    "content_hashes",
    "count_duplicates",
    "decode_images",
    "drop_duplicates",
    "find_duplicates",
    "format_summary",
    "load_cifake",
    "nested_train_subset",
    "split_from_hf",
    "stratified_subset",
    "summarize",
    "validation_size",
    "validation_split",
]

logger = logging.getLogger(__name__)

IMAGE_SIZE = 32
_TRANSIENT = "cannot read image ("  # how a failure that is not about the file's bytes starts
_CHUNK = 500  # images per worker task: big enough to amortise pickling, small enough for a smooth bar
_ARRAYS = ("images", "labels", "classes", "ids")


# ---------------------------------------------------------------------------
# Data containers
# ---------------------------------------------------------------------------


@dataclass
class Split:
    """One split: images (N,32,32,3) uint8, labels (1 = FAKE), CIFAR classes (-1..9), ids (str)."""

    images: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.classes = np.asarray(self.classes, dtype=np.int64)
        self.ids = np.asarray(self.ids, dtype=str)
        n = len(self.labels)
        if not len(self.images) == len(self.classes) == len(self.ids) == n:
            raise ValueError(f"Split: images, labels, classes and ids differ in length "
                             f"({len(self.images)}, {n}, {len(self.classes)}, {len(self.ids)})")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        n_fake = int(self.labels.sum())
        return f"Split(n={len(self)}, REAL={len(self) - n_fake}, FAKE={n_fake})"

    def take(self, index: Any) -> Split:
        """The rows selected by an index array, boolean mask or slice (a copy, except for slices)."""
        return Split(self.images[index], self.labels[index], self.classes[index], self.ids[index])


@dataclass
class CifakeData:
    """CIFAKE as loaded by `load_cifake`: train, val (carved from train) and test."""

    train: Split
    test: Split
    val: Split | None
    source: str  # the --data value, resolved: absolute path, "hf:REPO", "kaggle:HANDLE", "github"
    cache_path: Path | None  # the decoded-array cache folder used
    skipped: list[str] = field(default_factory=list)  # unreadable files skipped with skip_bad
    # Pairs of identical images, found on the (subset of) train and test before anything is
    # dropped, plus "dropped_test": test images removed by dedup.
    duplicates: dict = field(default_factory=dict)
    formats: dict = field(default_factory=dict)  # {"sizes": {"32x32": n}, "modes": {"RGB": n}, "converted": n}
    seconds: float = 0.0  # wall time of load_cifake
    warnings: list[str] = field(default_factory=list)  # e.g. fewer images than the full CIFAKE

    def splits(self) -> dict[str, Split]:
        """{"train", "val" (if any), "test"}."""
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def _decode_one(item: str | bytes) -> tuple[np.ndarray, str, str]:
    """One image file (path) or its bytes -> (32,32,3) uint8, original size "WxH", original mode."""
    return decode_image_info(item, str(item) if isinstance(item, str) else None, size=IMAGE_SIZE)


def _decode_chunk(items: Sequence[str | bytes]) -> tuple[np.ndarray, dict[int, str], Counter]:
    """Worker task: decode a chunk; failed rows stay zero and are reported as {row: reason}.

    The Counter counts ("size", "WxH"), ("mode", M) and ("converted", "") per image.
    """
    out = np.zeros((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    errors: dict[int, str] = {}
    counts: Counter = Counter()
    for i, item in enumerate(items):
        try:
            out[i], size, mode = _decode_one(item)
        except ImageDecodeError as e:
            errors[i] = e.reason
            continue
        except Exception as e:  # noqa: BLE001 - e.g. MemoryError: a bad row, not a crashed load
            errors[i] = f"{_TRANSIENT}{type(e).__name__}: {e})"
            continue
        counts["size", size] += 1
        counts["mode", mode] += 1
        counts["converted", ""] += size != f"{IMAGE_SIZE}x{IMAGE_SIZE}" or mode != "RGB"
    return out, errors, counts


def _worker_count() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _executor(workers: int) -> Executor:
    if sys.platform.startswith("linux"):
        # fork: workers start in milliseconds and, unlike spawn/forkserver, never re-import the
        # caller's __main__ (scripts need no `if __name__ == "__main__"` guard). Workers only run
        # PIL and numpy, as PyTorch's DataLoader workers do under fork.
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
    return ThreadPoolExecutor(workers)  # elsewhere: no re-import surprises; PIL decodes without the GIL


def decode_images(items: Sequence[str | bytes], *, progress: bool = True, desc: str = "decoding",
                  workers: int | None = None) -> tuple[np.ndarray, dict[int, str], dict[str, dict[str, int]]]:
    """Decode image files (paths) or their bytes into one (N,32,32,3) uint8 array, in parallel.

    Returns (images, errors, formats): `errors` maps the index of each unreadable item to the
    reason (its row stays zero); `formats` counts the original sizes and modes,
    {"sizes": {"WxH": n}, "modes": {"RGB": n}, "converted": n}, over the readable images.
    """
    from tqdm.auto import tqdm

    n = len(items)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)  # preallocated: no list of PIL images
    errors: dict[int, str] = {}
    counts: Counter = Counter()
    starts = range(0, n, _CHUNK)
    workers = _worker_count() if workers is None else max(1, workers)

    def collect(start: int, result: tuple) -> None:
        out, errs, c = result
        images[start:start + len(out)] = out
        errors.update({start + i: msg for i, msg in errs.items()})
        counts.update(c)
        bar.update(len(out))

    with tqdm(total=n, desc=desc, unit=" img", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or n <= 2 * _CHUNK:
            for start in starts:
                collect(start, _decode_chunk(items[start:start + _CHUNK]))
        else:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork in a process with threads (tqdm's monitor, torch);
                # the workers touch none of their state.
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
                ex = _executor(min(workers, len(starts)))
                try:
                    futures = {ex.submit(_decode_chunk, items[s:s + _CHUNK]): s for s in starts}
                    for fut in as_completed(futures):
                        collect(futures[fut], fut.result())
                except BaseException:  # Ctrl-C in a notebook: stop now, not after every queued chunk
                    ex.shutdown(wait=False, cancel_futures=True)
                    raise
                ex.shutdown()
    return images, errors, _formats(counts)


@dataclass
class _Decoded:
    """A whole source, decoded: train and test, bad entries as (location, reason), formats."""

    train: Split
    test: Split
    bad: list[tuple[str, str]]
    formats: dict
    cache_path: Path | None = None


def _formats(counts: Counter) -> dict:
    """{"sizes": {...}, "modes": {...}, "converted": n} from per-image counts (see _decode_chunk)."""
    out: dict = {"sizes": {}, "modes": {}, "converted": counts.get(("converted", ""), 0)}
    for (kind, value), n in sorted(counts.items()):
        if kind in ("size", "mode") and n:
            out[kind + "s"][value] = n
    return out


def _merge_formats(*formats: dict) -> dict:
    counts: Counter = Counter()
    for f in formats:
        counts.update({("size", k): v for k, v in f["sizes"].items()})
        counts.update({("mode", k): v for k, v in f["modes"].items()})
        counts["converted", ""] += f["converted"]
    return _formats(counts)


def _decode_listing(listing: Listing, *, progress: bool) -> _Decoded:
    rows = [r for split in SPLIT_NAMES for r in listing.files[split]]
    images, errors, formats = decode_images([item for _, _, item in rows], progress=progress,
                                            desc=f"decoding {len(rows):,} images")
    bad = list(listing.bad)
    for i, reason in sorted(errors.items()):
        rid, _, item = rows[i]
        bad.append((item if isinstance(item, str) else listing.root + rid, reason))
    splits, start = {}, 0
    for name in SPLIT_NAMES:
        part = listing.files[name]
        end = start + len(part)
        split = Split(images[start:end], [r[1] for r in part], [cifar_class_from_name(r[0]) for r in part],
                      [r[0] for r in part])
        keep = np.array([i not in errors for i in range(start, end)], bool)
        splits[name] = split if keep.all() else split.take(keep)
        start = end
    return _Decoded(splits["train"], splits["test"], bad, formats)


def _hf_columns(ds: Any) -> tuple[str, str, list[str]]:
    """(image column, label column, label names) of a `datasets.Dataset`, found by feature type."""
    import datasets

    feats = ds.features
    image_col = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise ValueError(f"dataset features {dict(feats)}: expected an Image column and a ClassLabel "
                         "column with the names REAL and FAKE")
    return image_col, label_col, list(feats[label_col].names)


def _decode_hf(ds: Any, *, where: str, progress: bool) -> tuple[Split, list[tuple[str, str]], dict]:
    image_col, label_col, names = _hf_columns(ds)
    # Map by the ClassLabel *names*, never by position: the CIFAKE mirror stores 0 = FAKE.
    to_label = np.array([label_from_name(n) for n in names], np.int64)
    table = ds.with_format("arrow")[:]  # respects any select()/shuffle() index mapping
    raw = table.column(label_col).to_numpy()
    if len(raw) and (raw.min() < 0 or raw.max() >= len(names)):
        raise ValueError(f"{where}: label values outside 0..{len(names) - 1} (ClassLabel {names})")
    cells = table.column(image_col).combine_chunks()
    blobs, paths = cells.field("bytes").to_pylist(), cells.field("path").to_pylist()
    items = [b if b is not None else (p or b"") for b, p in zip(blobs, paths, strict=True)]
    images, errors, formats = decode_images(items, progress=progress, desc=f"decoding {where}")
    split = Split(images, to_label[raw], np.full(len(raw), -1, np.int64), [str(i) for i in range(len(raw))])
    bad = [(f"{where}#{i}", reason) for i, reason in sorted(errors.items())]
    if errors:
        split = split.take(np.array([i not in errors for i in range(len(raw))], bool))
    return split, bad, formats


def split_from_hf(ds: Any, *, progress: bool = True) -> Split:
    """A `datasets.Dataset` with an Image and a ClassLabel (REAL/FAKE) column -> Split.

    Labels are mapped by the ClassLabel names (1 = FAKE); ids are row indices; classes -1.
    Raises ValueError naming the first unreadable rows.
    """
    split, bad, _ = _decode_hf(ds, where="dataset", progress=progress)
    if bad:
        raise ValueError(_bad_message(bad))
    return split


def _decode_hf_source(repo: str, *, progress: bool) -> _Decoded:
    dd = load_hf_dataset(repo)
    parts = {name: _decode_hf(dd[name], where=f"hf:{repo}/{name}", progress=progress) for name in SPLIT_NAMES}
    (train, bad_train, f_train), (test, bad_test, f_test) = parts["train"], parts["test"]
    return _Decoded(train, test, bad_train + bad_test, _merge_formats(f_train, f_test))


# ---------------------------------------------------------------------------
# Cache: one folder per source, .npy arrays + meta.json (written last)
# ---------------------------------------------------------------------------


def _write_cache(folder: Path, fingerprint: str, source: Source, decoded: _Decoded, seconds: float) -> bool:
    """Cache the decoded arrays (see `cifake_lib.data.cache`), unless a failure may be passing.

    A file that failed for a reason other than its bytes (out of memory, say) is not a fact
    about the source, so such a result is not cached at all.
    """
    if any(reason.startswith(_TRANSIENT) for _, reason in decoded.bad):
        logger.warning("not caching %s: some files failed for a reason that may pass", source.name)
        return False
    arrays = {f"{name}_{key}": getattr(split, key)
              for name, split in (("train", decoded.train), ("test", decoded.test)) for key in _ARRAYS}
    return write_arrays(folder, arrays, {
        "source": source.name, "fingerprint": fingerprint,
        "n": {"train": len(decoded.train), "test": len(decoded.test)}, "bad": decoded.bad,
        "formats": decoded.formats, "decode_seconds": round(seconds, 2)})


def _read_cache(folder: Path, fingerprint: str) -> _Decoded | None:
    """The cached arrays if they match `fingerprint` and pass their checksums, else None."""
    found = read_arrays(folder, fingerprint, [f"{name}_{key}" for name in SPLIT_NAMES for key in _ARRAYS])
    if found is None:
        return None
    arrays, meta = found
    try:
        parts = {name: Split(**{key: arrays[f"{name}_{key}"] for key in _ARRAYS}) for name in SPLIT_NAMES}
        shape_ok = all(p.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3) and p.images.dtype == np.uint8
                       and len(p) == meta["n"][name] for name, p in parts.items())
    except (ValueError, KeyError, TypeError) as e:
        shape_ok, parts = False, {}
        logger.warning("ignoring the CIFAKE cache in %s (%s)", folder, e)
    if not shape_ok:
        return None
    bad = [tuple(b) for b in meta.get("bad", [])]
    if _readable_again(bad):
        logger.info("files that failed before are readable now; rebuilding the CIFAKE cache in %s", folder)
        return None
    return _Decoded(parts["train"], parts["test"], bad, meta.get("formats", {}), folder)


SPOT_CHECKS = 8  # images per split decoded again from the source on every warm load


def _differs_from_listing(cached: _Decoded, listing: Listing) -> str | None:
    """Why a cache entry cannot stand for this local folder, or None. The checksums prove an entry
    intact, not that it came from these files; so every cached id, label and class is checked
    against the folder's listing (labels come from the folder names), an id missing from the cache
    must be one that failed to decode, and a few images drawn at random are decoded again and
    compared pixel for pixel. See docs/architecture.md, "What the caches trust"."""
    bad = {loc for loc, _ in cached.bad}
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # unpredictable: no forging around it
    for name in SPLIT_NAMES:
        split, rows = getattr(cached, name), {rid: (label, item) for rid, label, item in listing.files[name]}
        for i, rid in enumerate(split.ids.tolist()):
            row = rows.get(rid)
            if row is None:
                return f"{name} id {rid!r} is not in the source"
            if int(split.labels[i]) != row[0] or int(split.classes[i]) != cifar_class_from_name(rid):
                return f"{name} {rid!r}: label or class differs from the source's folder"
        missing = set(rows) - set(split.ids.tolist())
        lost = [rid for rid in missing if (rows[rid][1] if isinstance(rows[rid][1], str) else listing.root + rid) not in bad]
        if lost:
            return f"{len(lost)} {name} image(s) of the source are missing, e.g. {sorted(lost)[0]!r}"
        for i in rng.choice(len(split), size=min(SPOT_CHECKS, len(split)), replace=False) if len(split) else []:
            try:
                pixels = _decode_one(rows[split.ids[i]][1])[0]
            except Exception:  # noqa: BLE001 - a file that no longer decodes: the source changed
                return f"{name} {split.ids[i]!r} no longer decodes"
            if not np.array_equal(pixels, split.images[i]):
                return f"{name} {split.ids[i]!r}: the cached pixels differ from the file's"
    return None


def _readable_again(bad: Sequence[tuple[str, str]]) -> bool:
    """True when a local file that failed to decode last time decodes now (fixed permissions, say).

    Failures are not facts: a file's size and modification time, which the fingerprint covers,
    need not change when it is fixed. Archive members (`archive:member`) cannot change without
    the archive changing, so only local files are tried again.
    """
    for loc, _ in bad:
        if os.path.isfile(loc):
            try:
                _decode_one(loc)
            except Exception:  # noqa: BLE001 - still bad, whatever the reason
                continue
            return True
    return False


def _load_decoded(source: Source, *, progress: bool) -> _Decoded:
    """Decoded train and test of a source, from the cache when it still matches the source."""
    listing = None
    if source.kind == "folder":
        listing = list_folder(source.location)  # also checks the layout, before any cache is used
        fingerprint = f"{listing.root}\t{listing.fingerprint}"
        # Keyed by the layout root: `--data DIR` and `--data DIR/DATASET` share one cache.
        source = Source("folder", listing.root)
    elif source.kind == "archive":
        fingerprint = archive_fingerprint(source.location)
    else:
        fingerprint = source.name  # remote: the repository or handle (warm loads work offline)
    folder = cache_root() / "data" / source.cache_name
    cached = _read_cache(folder, fingerprint)
    mismatch = _differs_from_listing(cached, listing) if cached is not None and listing is not None else None
    if mismatch:
        logger.warning("the CIFAKE cache in %s does not match the source's files (%s); rebuilding it from "
                       "the source", folder, mismatch)
    elif cached is not None:
        logger.info("CIFAKE from cache %s", folder)
        return cached
    t0 = time.perf_counter()
    if source.kind == "hf":
        decoded = _decode_hf_source(source.location, progress=progress)
    else:
        if source.kind == "archive":
            listing = read_archive(source.location, progress=progress)
        elif source.kind == "kaggle":
            listing = list_folder(fetch_kaggle(source.location))
        elif source.kind == "github":
            listing = list_folder(fetch_github(source.location))
        assert listing is not None, source
        decoded = _decode_listing(listing, progress=progress)
        del listing  # the archive's bytes (~110 MB for CIFAKE) are no longer needed
    written = _write_cache(folder, fingerprint, source, decoded, time.perf_counter() - t0)
    decoded.cache_path = folder if written else None
    return decoded


def _bad_list(bad: Sequence[tuple[str, str]]) -> str:
    shown = "; ".join(f"{loc}: {reason}" for loc, reason in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"{len(bad)} unreadable or unexpected file(s): {shown}{more}"


def _bad_message(bad: Sequence[tuple[str, str]]) -> str:
    return f"{_bad_list(bad)}. Fix or remove them, or pass --skip-bad (skip_bad=True) to skip them"


# ---------------------------------------------------------------------------
# Subsets and validation split (seeded, stratified)
# ---------------------------------------------------------------------------


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """Independent streams per purpose, so changing one size never reshuffles another choice."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode())])


def _allocate(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split n over strata in proportion to their sizes: largest remainder, ties broken at random
    (so no label or class is favoured systematically), never above a stratum's size."""
    exact = counts * (n / counts.sum())
    alloc = np.floor(exact).astype(np.int64)
    order = np.lexsort((rng.random(len(counts)), -(exact - alloc)))
    alloc[order[: n - alloc.sum()]] += 1
    return np.minimum(alloc, counts)


def _pick_by_class(idx: np.ndarray, classes: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n of the rows `idx`, stratified by CIFAR class (unknown, -1, is one more stratum)."""
    keys, inverse, counts = np.unique(classes[idx], return_inverse=True, return_counts=True)
    return [rng.choice(idx[inverse == k], size=a, replace=False)
            for k, a in enumerate(_allocate(counts, n, rng)) if a > 0]


def stratified_subset(split: Split, n: int, *, seed: int = 0) -> Split:
    """n images, half FAKE (FAKE gets n // 2), each label stratified by CIFAR class; seeded.

    Rows keep their original order. Raises ValueError when a label has too few images.
    """
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    rng = _rng(seed, "subset")
    want = {0: n - n // 2, 1: n // 2}
    picks = []
    for label, k in want.items():
        idx = np.flatnonzero(split.labels == label)
        if k > len(idx):
            raise ValueError(f"a subset of {n} needs {k} {LABEL_NAMES[label]} images, "
                             f"only {len(idx)} available (of {len(split)})")
        picks += _pick_by_class(idx, split.classes, k, rng)
    return split.take(np.sort(np.concatenate(picks)))


def validation_size(n: int, fraction: float) -> int:
    """How many of `n` training images `validation_split` holds out: round(fraction * n), at least 1,
    leaving at least 1 (a study plans train_sizes with it before any image is read)."""
    return min(max(1, round(fraction * n)), n - 1)


def validation_split(split: Split, fraction: float, *, seed: int = 0) -> tuple[Split, Split]:
    """(train, val): `round(fraction * N)` images (at least 1) held out, stratified by label, then
    by CIFAR class within each label; seeded. Both keep the original row order."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) to carve a validation split, got {fraction}")
    n_val = validation_size(len(split), fraction)
    if n_val < 1:
        raise ValueError(f"cannot carve a validation split from {len(split)} image(s)")
    rng = _rng(seed, "val")
    labels, counts = np.unique(split.labels, return_counts=True)
    picks = []
    for label, k in zip(labels, _allocate(counts, n_val, rng), strict=True):
        picks += _pick_by_class(np.flatnonzero(split.labels == label), split.classes, int(k), rng)
    val_idx = np.sort(np.concatenate(picks))
    keep = np.ones(len(split), bool)
    keep[val_idx] = False
    return split.take(keep), split.take(val_idx)


def _nested_order(split: Split, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` in an order whose every prefix is stratified by CIFAR class (within one of the
    stratum's share, for any prefix length).

    Each stratum is shuffled; its k-th row (of m) gets the key (k + u) / m with one u ~ U(0, 1)
    per stratum, and rows are sorted by key: a prefix of n rows then holds n * m / M rows of a
    stratum, rounded one way or the other. Prefixes of one order are nested by construction,
    which a per-size largest-remainder allocation is not (it can take a row back as n grows).
    """
    keys = np.empty(len(rows))
    classes = split.classes[rows]
    for c in np.unique(classes):
        where = np.flatnonzero(classes == c)
        rng.shuffle(where)
        keys[where] = (np.arange(len(where)) + rng.random()) / len(where)
    return rows[np.argsort(keys, kind="stable")]


def nested_train_subset(split: Split, n: int | None, *, seed: int = 0) -> Split:
    """n training images (FAKE gets n // 2), stratified by label and CIFAR class, seeded, and
    nested: for one split and seed, the set for a smaller n is contained in the set for a larger
    one (a learning curve adds images, never swaps them). None: the whole split.

    Rows keep their original order. Raises ValueError when a label has too few images.
    """
    if n is None:
        return split
    if n <= 1:
        raise ValueError(f"train_size must be at least 2 (one image per label), got {n}")
    rng = _rng(seed, "train_size")
    picks = []
    for label, k in ((0, n - n // 2), (1, n // 2)):
        rows = np.flatnonzero(split.labels == label)
        if k > len(rows):
            raise ValueError(f"train_size {n} needs {k} {LABEL_NAMES[label]} training images, only "
                             f"{len(rows)} available (of {len(split)}, after the validation split)")
        picks.append(_nested_order(split, rows, rng)[:k])
    return split.take(np.sort(np.concatenate(picks)))


# ---------------------------------------------------------------------------
# Audit: exact duplicates
# ---------------------------------------------------------------------------


def content_hashes(images: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each image's pixels, (N,) uint64; equal images have equal hashes.

    A random linear hash over 64-bit words (mod 2^64), vectorised: ~0.1 s for all of CIFAKE,
    where a per-image hashlib loop takes over a second. Matches are confirmed pixel by pixel.
    """
    n = len(images)
    if n == 0:
        return np.empty(0, np.uint64)
    flat = np.asarray(images).reshape(n, -1)
    width = -(-flat.shape[1] // 8)  # 64-bit words per image
    mult = np.random.default_rng(0x5EED).integers(0, 2**63, size=width, dtype=np.uint64) * 2 + 1
    out = np.empty(n, np.uint64)
    for s in range(0, n, 4096):  # blocks bound the temporary to ~12 MB
        block = np.zeros((min(4096, n - s), width * 8), np.uint8)
        block[:, :flat.shape[1]] = flat[s:s + 4096]
        out[s:s + len(block)] = (block.view(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    return out


def find_duplicates(splits: Mapping[str, Split]) -> list[list[tuple[str, int]]]:
    """Groups of identical images (same pixels) across `splits`, as [(split name, row), ...].

    Byte-identical files decode to identical pixels, so this finds CIFAKE's duplicate files;
    hash matches are confirmed pixel by pixel.
    """
    names = list(splits)
    hashes = [content_hashes(splits[k].images) for k in names]
    if not hashes or not sum(len(h) for h in hashes):
        return []
    which = np.concatenate([np.full(len(h), j) for j, h in enumerate(hashes)])
    row = np.concatenate([np.arange(len(h)) for h in hashes])
    _, inverse, counts = np.unique(np.concatenate(hashes), return_inverse=True, return_counts=True)
    candidates: dict[int, list[tuple[str, int]]] = {}
    for k in np.flatnonzero(counts[inverse] > 1):
        candidates.setdefault(int(inverse[k]), []).append((names[which[k]], int(row[k])))
    groups = []
    for members in candidates.values():
        exact: dict[bytes, list[tuple[str, int]]] = {}
        for name, i in members:
            exact.setdefault(np.asarray(splits[name].images[i]).tobytes(), []).append((name, i))
        groups += [g for g in exact.values() if len(g) > 1]
    return sorted(groups)


def count_duplicates(train: Split, test: Split) -> dict[str, int]:
    """Duplicate pairs {"within_train", "within_test", "train_test"}; a group of k counts k(k-1)/2."""
    out = {"within_train": 0, "within_test": 0, "train_test": 0}
    for group in find_duplicates({"train": train, "test": test}):
        a = sum(name == "train" for name, _ in group)
        b = len(group) - a
        out["within_train"] += a * (a - 1) // 2
        out["within_test"] += b * (b - 1) // 2
        out["train_test"] += a * b
    return out


def drop_duplicates(split: Split, reference: Sequence[Split]) -> Split:
    """`split` without the images whose exact pixels also occur in any `reference` split."""
    refs = {f"ref{j}": r for j, r in enumerate(reference)}
    drop = {i for group in find_duplicates({"split": split, **refs})
            if any(name != "split" for name, _ in group) for name, i in group if name == "split"}
    if not drop:
        return split
    keep = np.ones(len(split), bool)
    keep[sorted(drop)] = False
    return split.take(keep)


# ---------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------


FULL_COUNTS = {"train": 50_000, "test": 10_000}  # images per label in the published CIFAKE


def _counts_line(train: Split, test: Split) -> str:
    return "; ".join(f"{name} {label_name} {int((split.labels == label).sum()):,}"
                     for name, split in (("train", train), ("test", test))
                     for label, label_name in enumerate(LABEL_NAMES))


# source -> its shortfall warning, once logged (CifakeData.warnings keeps it; format_summary does not repeat it)
_WARNED_SHORT: dict[str, str] = {}


def _shortfall(source: str, train: Split, test: Split) -> str | None:
    """A warning when a source names its files like CIFAKE but holds fewer images than CIFAKE.

    CIFAKE-style names (`12 (3).jpg`) on at least 90% of the images make a source "look like"
    CIFAKE; a shortfall then means a sample (fine, if intended) or an incomplete copy.
    """
    n = len(train) + len(test)
    if n == 0 or ((train.classes >= 0).sum() + (test.classes >= 0).sum()) < 0.9 * n:
        return None
    short = [f"{name} {label_name} {int((split.labels == label).sum()):,} of {FULL_COUNTS[name]:,}"
             for name, split in (("train", train), ("test", test)) for label, label_name in enumerate(LABEL_NAMES)
             if (split.labels == label).sum() < FULL_COUNTS[name]]
    if not short:
        return None
    return (f"{source} looks like CIFAKE but holds fewer images than the full dataset ({'; '.join(short)}): "
            "a sample, or an incomplete copy? The full CIFAKE has 50,000/50,000 train and 10,000/10,000 test")


def load_cifake(data: str | os.PathLike | None = None, *, subset: tuple[int, int] | None = None,
                val_fraction: float = 0.1, seed: int = 0, dedup: bool = False, skip_bad: bool = False,
                progress: bool = True, train_size: int | None = None) -> CifakeData:
    """Load CIFAKE from `data` (see `cifake_lib.data.sources.resolve_source`; default $CIFAKE_DATA, else hf).

    subset: (train, test) totals, half FAKE each, stratified by CIFAR class; val_fraction of the
    (subset of) train is held out as `val`, stratified; dedup drops test images whose pixels also
    occur in train or val. `duplicates` counts pairs on the subset, before val and dedup.
    skip_bad skips unreadable files (listed in `skipped`) instead of raising ValueError.

    Validation images whose pixels also occur in train are always dropped (`duplicates
    ["dropped_val"]`): a twin would make thresholds and early stopping see a training image.
    train_size (see `nested_train_subset`) then keeps a nested, stratified part of what is left
    of train; validation and test do not depend on it, so every size of a learning curve is
    tuned and scored on the same images.
    """
    t0 = time.perf_counter()
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and (len(subset) != 2 or min(subset) <= 0):
        raise ValueError(f"subset must be (train, test) with positive sizes, got {subset}")
    source = resolve_source(data)
    decoded = _load_decoded(source, progress=progress)
    if decoded.bad:
        if not skip_bad:
            raise ValueError(_bad_message(decoded.bad))
        logger.warning("skipped %s", _bad_list(decoded.bad))
    train, test = decoded.train, decoded.test
    for name, split in (("train", train), ("test", test)):
        for label, label_name in enumerate(LABEL_NAMES):
            if not (split.labels == label).any():
                raise ValueError(f"{source.name}: no readable {name} {label_name} images")
    logger.info("loaded %s: %s", source.name, _counts_line(train, test))
    shortfall = _shortfall(source.name, train, test)
    if shortfall and str(source) not in _WARNED_SHORT:  # once per source and process: notebooks load often
        _WARNED_SHORT[str(source)] = shortfall
        logger.warning(shortfall)
    if subset is not None:
        train = stratified_subset(train, subset[0], seed=seed)
        test = stratified_subset(test, subset[1], seed=seed)
    duplicates = count_duplicates(train, test)
    val = None
    duplicates["dropped_val"] = 0
    if val_fraction > 0:
        train, val = validation_split(train, val_fraction, seed=seed)
        n_val = len(val)
        val = drop_duplicates(val, [train])
        duplicates["dropped_val"] = n_val - len(val)
    n_test = len(test)
    if dedup:  # against the whole train, before train_size: one test set for every size
        test = drop_duplicates(test, [train] + ([val] if val is not None else []))
    duplicates["dropped_test"] = n_test - len(test)
    train = nested_train_subset(train, train_size, seed=seed)
    return CifakeData(
        train=train, test=test, val=val, source=source.name, cache_path=decoded.cache_path, skipped=[loc for loc, _ in decoded.bad],
        duplicates=duplicates, formats=decoded.formats, seconds=time.perf_counter() - t0,
        warnings=[shortfall] if shortfall else [],
    )


# ---------------------------------------------------------------------------
# Summary (what `cifake data` prints)
# ---------------------------------------------------------------------------


def _split_counts(split: Split) -> dict[str, Any]:
    n_fake = int(split.labels.sum())
    by_class = {}
    for c, name in enumerate(CIFAR_CLASSES):
        sel = split.classes == c
        if sel.any():
            fake = int(split.labels[sel].sum())
            by_class[name] = {"REAL": int(sel.sum()) - fake, "FAKE": fake}
    return {"REAL": len(split) - n_fake, "FAKE": n_fake, "total": len(split), "by_class": by_class}


def summarize(data: CifakeData) -> dict[str, Any]:
    """A JSON-ready summary: counts per split ("val" only when there is one), label and CIFAR
    class (known classes only), duplicate pairs, skipped files, image sizes/modes found, cache
    folder, load seconds."""
    return {
        "source": data.source,
        "splits": {name: _split_counts(split) for name, split in data.splits().items()},
        "duplicates": dict(data.duplicates),
        "skipped": list(data.skipped),
        "formats": data.formats,
        "cache": str(data.cache_path) if data.cache_path is not None else None,
        "seconds": round(data.seconds, 3),
        "warnings": list(data.warnings),
    }


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v:,}" for k, v in sorted(counts.items())) or "none"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable version of `summarize`'s dict (a warning this process has logged already
    is not printed again; `summarize` keeps it)."""
    splits = summary["splits"]
    lines = [f"CIFAKE from {summary['source']} ({summary['seconds']:.1f} s; cache: {summary['cache']})", "",
             f"{'split':<8}{'REAL':>9}{'FAKE':>9}{'total':>9}"]
    lines += [f"{name:<8}{s['REAL']:>9,}{s['FAKE']:>9,}{s['total']:>9,}" for name, s in splits.items()]
    classes = [c for c in CIFAR_CLASSES if any(c in s["by_class"] for s in splits.values())]
    if classes:
        lines += ["", "per CIFAR-10 class, REAL/FAKE:",
                  f"{'class':<12}" + "".join(f"{name:>16}" for name in splits)]
        for c in classes:
            cells = [s["by_class"].get(c, {"REAL": 0, "FAKE": 0}) for s in splits.values()]
            lines.append(f"{c:<12}" + "".join(f"{x['REAL']:,}/{x['FAKE']:,}".rjust(16) for x in cells))
    else:
        lines += ["", "CIFAR-10 classes: unknown for this source"]
    d = summary["duplicates"]
    lines += ["", f"identical images (pairs): within train {d['within_train']:,}, within test "
                  f"{d['within_test']:,}, train/test {d['train_test']:,}"
                  + (f"; {d['dropped_test']:,} test image(s) dropped (--dedup)" if d.get("dropped_test") else
                     ("" if not d["train_test"] else "; --dedup drops the test copies"))
                  + (f"; {d['dropped_val']:,} validation image(s) with a twin in train dropped"
                     if d.get("dropped_val") else "")]
    f = summary.get("formats") or {}
    if f:
        lines.append(f"image sizes: {_counts_text(f.get('sizes', {}))}; modes: {_counts_text(f.get('modes', {}))}"
                     + (f"; {f['converted']:,} converted to 32x32 RGB" if f.get("converted") else ""))
    skipped = summary["skipped"]
    lines.append(f"skipped: {len(skipped)} file(s)" + (": " + ", ".join(skipped[:10]) if skipped else "")
                 + (", ..." if len(skipped) > 10 else ""))
    # load_cifake logged these as it loaded, once per source and process: a notebook printing the
    # summary right after would show the same warning twice
    lines += [f"warning: {w}" for w in summary.get("warnings", []) if w not in _WARNED_SHORT.values()]
    return "\n".join(lines)
