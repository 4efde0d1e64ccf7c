"""Run every benchmark and print one table (or --json).

    python bench/run.py                      # all, on $CIFAKE_ARCHIVE (the full CIFAKE .tar.gz)
    python bench/run.py --only data,cnn      # a selection
    python bench/run.py --json               # one JSON object: {bench: its own JSON, ..., "table": rows}

Each benchmark runs in its own process (so timings and peak memory are its own) with
`--json`; this script only collects their figures. Needs the full archive for `data` and `cnn`.
On a 2-core machine the whole set takes about 30 minutes, most of it the CNN's 15.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _data(r: dict) -> list[tuple]:
    runs, t = r["runs"], r["targets"]
    rows = []
    for name in ("folder cold", "folder warm", "archive cold", "archive warm"):
        if name in runs:
            limit = t["cold" if name.endswith("cold") else "warm"]
            rows.append((f"data load, {name} (120k images)", runs[name]["seconds"], "s", f"<= {limit}",
                         runs[name]["seconds"] <= limit))
            rows.append((f"data load, {name}: peak RSS", runs[name]["peak_rss_mb"], "MB", f"<= {t['rss_mb']}",
                         runs[name]["peak_rss_mb"] <= t["rss_mb"]))
    if "hf imagefolder" in runs:
        rows.append(("datasets imagefolder, same folder", runs["hf imagefolder"]["seconds"], "s", "reference", None))
    return rows


def _zeroshot(r: dict) -> list[tuple]:
    rows = []
    if "prompt_sets" in r:
        p = r["prompt_sets"]
        rows.append(("zero-shot: five prompt sets / one", p["ratio"], "x", f"<= {p['target_ratio']}", p["pass"]))
    if "throughput" in r:
        t = r["throughput"]
        rows.append((f"embedding extraction, end to end ({t['device']})", t["end_to_end_img_s"], "img/s", "", None))
        rows.append(("embedding extraction, end to end / model only", t["ratio"], "x", f">= {t['target_ratio']}",
                     t["pass"]))
    return rows


def _finetune(r: dict) -> list[tuple]:
    v = r["variants"][0]
    rows = [(f"fine-tuning ViT-B/32 shape, model only ({r['device']}, {r['mixed_precision']})",
             v["model_only_images_per_second"], "img/s", "", None),
            ("fine-tuning, FLOPs per image (one step, FlopCounterMode)", v["gflops_per_image"], "GFLOP", "", None)]
    if v["model_only_mfu"] is not None:
        rows.append(("fine-tuning, model FLOP utilisation (model only)", v["model_only_mfu"], "", "", None))
    if v["end_to_end_images_per_second"] is not None:
        rows += [(f"fine-tuning ViT-B/32 shape, end to end ({r['device']}, {r['mixed_precision']})",
                  v["end_to_end_images_per_second"], "img/s", "", None),
                 ("fine-tuning, end to end / model forward+backward", v["ratio"], "x", f">= {r['target_ratio']}",
                  r["meets_target"])]
    return rows


def _cnn(r: dict) -> list[tuple]:
    return [
        # Information only: the recipe is chosen on validation (bench/sweep_cnn.py), never against test.
        ("CIFAKE paper CNN: test accuracy (full 100k/20k)", r["accuracy"], "", "", None),
        ("CIFAKE paper CNN: test ROC AUC", r["roc_auc"], "", "", None),
        ("CIFAKE paper CNN: training time", r["train_seconds"], "s", "<= 900", r["train_seconds"] <= 900),
    ]


# name -> (script, extra arguments, needs the archive, rows from its JSON)
BENCHES = {
    "data": ("bench_data.py", ["--skip-hf"], True, _data),
    "zeroshot": ("bench_zeroshot.py", [], False, _zeroshot),
    "finetune": ("bench_finetune.py", [], False, _finetune),
    "cnn": ("bench_cnn.py", [], True, _cnn),
}


def run_one(name: str, archive: str | None, with_hf: bool) -> dict:
    script, extra, needs_archive, _ = BENCHES[name]
    cmd = [sys.executable, str(HERE / script), "--json", *extra]
    if name == "data" and with_hf:
        cmd.remove("--skip-hf")
    env = dict(os.environ)
    if needs_archive:
        if not archive:
            raise SystemExit(f"bench {name}: needs the full CIFAKE archive (--archive or $CIFAKE_ARCHIVE)")
        cmd += [archive] if name == "data" else ["--data", archive]
    print(f"[bench] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench {name} failed with exit status {proc.returncode}")
    result = json.loads(proc.stdout)
    result["_seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", default=os.environ.get("CIFAKE_ARCHIVE"), help="the full CIFAKE .tar.gz")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--with-hf", action="store_true", help="also time datasets' imagefolder loader (slow)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHES)
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {sorted(unknown)}; known: {', '.join(BENCHES)}")

    results = {name: run_one(name, a.archive, a.with_hf) for name in names}
    table = [row for name in names for row in BENCHES[name][3](results[name])]
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version()}
    if a.json:
        print(json.dumps({"machine": machine, **results,
                          "table": [dict(zip(("figure", "value", "unit", "target", "ok"), r, strict=True))
                                    for r in table]}, indent=2))
        return 0
    print(f"machine: {machine['cpus']} CPUs, {machine['processor']}, Python {machine['python']}")
    print(f"{'figure':<64}{'value':>12} {'unit':<6}{'target':>10}  ok")
    for figure, value, unit, target, ok in table:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{figure:<64}{value:>12.3f} {unit:<6}{target:>10}  {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
