"""Benchmark the data layer on the full CIFAKE archive (120,000 images).

    python bench/bench_data.py [ARCHIVE] [--json] [--skip-hf] [--workdir DIR]

ARCHIVE defaults to $CIFAKE_ARCHIVE. The archive is unpacked to a temporary folder, then each
measurement runs in a fresh Python process (so peak memory is its own):

- `load_cifake` from the folder, cold (empty cache: list, decode, write the cache) and warm (cache);
- `load_cifake` from the archive directly (read in memory, no unpacking), cold and warm;
- for comparison, `datasets.load_dataset("imagefolder", data_dir=FOLDER)` (its own arrow cache,
  cold) and the time to materialise its images as one uint8 array.

A warm load verifies the checksum of every cached array (`cifake_lib.data.cache`); the cost of
that checksum over CIFAKE's 369 MB of pixels is printed for each algorithm available (xxh3_128
with the optional xxhash package, else blake2b-128 from the standard library).

Every `load_cifake` uses the study's defaults (val_fraction 0.1, seed 0). Peak RSS is the
process's own maximum resident set (resource.getrusage); decode workers are reported
separately. Targets (a 2-core machine): cold <= 60 s, warm <= 2 s, peak RSS <= 1.5 GB.
Wall times depend on what else runs on the machine; CPU seconds (process + workers) are less noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TARGETS = {"cold": 60.0, "warm": 2.0, "rss_mb": 1536.0}


def _rss_mb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # macOS reports bytes


def _cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def measure(kind: str, source: str) -> dict:
    """Runs inside the fresh child process; returns what it measured."""
    import numpy as np

    t0 = time.perf_counter()
    out: dict = {}
    if kind == "cifake":
        from cifake_lib.data.load import load_cifake

        data = load_cifake(source, progress=False)
        out["seconds"] = time.perf_counter() - t0
        out["n"] = {name: len(s) for name, s in data.splits().items()}
        out["duplicates"] = data.duplicates
        out["cache"] = str(data.cache_path)
    elif kind == "imagefolder":
        import datasets

        datasets.disable_progress_bars()
        dd = datasets.load_dataset("imagefolder", data_dir=source, cache_dir=os.environ["BENCH_HF_CACHE"])
        out["load_seconds"] = time.perf_counter() - t0
        out["label_names"] = dd["train"].features["label"].names
        t1 = time.perf_counter()
        for name, ds in dd.items():
            images = np.empty((len(ds), 32, 32, 3), np.uint8)
            for i, row in enumerate(ds):
                images[i] = np.asarray(row["image"].convert("RGB"))
            out.setdefault("n", {})[name] = len(images)
            del images
        out["materialise_seconds"] = time.perf_counter() - t1
        out["seconds"] = time.perf_counter() - t0
    else:
        raise ValueError(kind)
    out["cpu_seconds"] = _cpu_s()
    out["peak_rss_mb"] = _rss_mb(resource.RUSAGE_SELF)
    out["workers_peak_rss_mb"] = _rss_mb(resource.RUSAGE_CHILDREN)
    return out


def checksum_seconds() -> dict[str, float]:
    """Seconds to checksum a CIFAKE-sized image array with each available algorithm."""
    import numpy as np

    from cifake_lib.data import cache

    images = np.random.default_rng(0).integers(0, 256, (120_000, 32, 32, 3), dtype=np.uint8)
    out = {}
    for algorithm in ("xxh3_128", "blake2b-128"):
        if algorithm == "xxh3_128" and cache.xxhash is None:
            continue
        t0 = time.perf_counter()
        cache.checksum(images, algorithm)
        out[algorithm] = time.perf_counter() - t0
    return out


def run_child(kind: str, source: str, cache: Path, hf_cache: Path) -> dict:
    env = {**os.environ, "CIFAKE_CACHE": str(cache), "BENCH_HF_CACHE": str(hf_cache),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--measure", kind, source]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive", nargs="?", default=os.environ.get("CIFAKE_ARCHIVE"),
                    help="the full CIFAKE .tar.gz (default: $CIFAKE_ARCHIVE)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--skip-hf", action="store_true", help="skip the datasets imagefolder comparison")
    ap.add_argument("--workdir", default=None, help="where to unpack (default: a temporary folder)")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "SOURCE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(*a.measure)))
        return 0
    if not a.archive or not Path(a.archive).is_file():
        ap.error("give the CIFAKE archive as an argument or in $CIFAKE_ARCHIVE")
    log = (lambda *x: None) if a.json else (lambda *x: print(*x, file=sys.stderr, flush=True))

    work = Path(tempfile.mkdtemp(prefix="bench_data_", dir=a.workdir))
    result: dict = {"archive": str(Path(a.archive).resolve()), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()[0], "targets": TARGETS, "runs": {}}
    try:
        log(f"unpacking {a.archive} to {work} ...")
        t0 = time.perf_counter()
        with tarfile.open(a.archive) as tf:
            tf.extractall(work / "unpacked", filter="data")
        result["unpack_seconds"] = time.perf_counter() - t0
        folder = str(work / "unpacked")
        runs = [("folder cold", "cifake", folder, "c1"), ("folder warm", "cifake", folder, "c1"),
                ("archive cold", "cifake", str(a.archive), "c2"), ("archive warm", "cifake", str(a.archive), "c2")]
        if not a.skip_hf:
            runs.append(("hf imagefolder", "imagefolder", folder, "c3"))
        for name, kind, source, cache in runs:
            log(f"{name} ...")
            result["runs"][name] = run_child(kind, source, work / cache, work / "hf")
        result["loadavg_end"] = os.getloadavg()[0]
        result["checksum_seconds"] = checksum_seconds()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = result["runs"]
    for name, r in rows.items():
        if name.startswith(("folder", "archive")):
            limit = TARGETS["cold" if name.endswith("cold") else "warm"]
            r["ok"] = r["seconds"] <= limit and r["peak_rss_mb"] <= TARGETS["rss_mb"]
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"CIFAKE data benchmark: {result['archive']} ({result['cpus']} CPUs, load average "
          f"{result['loadavg_start']:.1f} -> {result['loadavg_end']:.1f}; unpack {result['unpack_seconds']:.1f} s)")
    print(f"{'measurement':<16}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'workers MB':>12}  target")
    for name, r in rows.items():
        target = "" if "ok" not in r else (
            f"<= {TARGETS['cold' if name.endswith('cold') else 'warm']:.0f} s, "
            f"<= {TARGETS['rss_mb']:.0f} MB: {'ok' if r['ok'] else 'MISSED'}")
        print(f"{name:<16}{r['seconds']:>9.2f}{r['cpu_seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}"
              f"{r['workers_peak_rss_mb']:>12.0f}  {target}")
    if "hf imagefolder" in rows:
        r = rows["hf imagefolder"]
        print(f"  imagefolder: load_dataset {r['load_seconds']:.1f} s + materialise {r['materialise_seconds']:.1f} s; "
              f"label names {r['label_names']} (0 = FAKE there)")
    print("  cache checksum over 369 MB of pixels: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in result["checksum_seconds"].items()) + " (part of every warm load)")
    first = rows["folder cold"]
    print(f"  splits {first['n']}; duplicate pairs {first['duplicates']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
