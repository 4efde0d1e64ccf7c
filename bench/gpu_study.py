"""The GPU study in one command: fine-tuning speed per variant, embedding extraction, the memory estimate,
and the whole report preset at full scale with the ViT-B/32 stand-in, per stage time and peak GPU memory.

    python bench/gpu_study.py --standin STANDIN --data CIFAKE.tar.gz --out gpu_study

Writes OUT/gpu_study.json (every figure) and OUT/gpu_study.md (the tables for the README's Performance
section), after each part, so an interrupted run keeps what it measured; the study itself resumes
(finished stages are skipped). `--only bench,embed,memory,study` picks parts. Rough duration on one
H100/H200: bench 10-15 min (8 variants, each compiled twice), embed 1 min, memory 1 min, study 30-60 min.

Parts:
- bench:  bench/bench_finetune.py --variants all --device cuda at each --batch-sizes (img/s, TFLOP/s, MFU).
- embed:  bench/bench_zeroshot.py's embedding throughput (fp16) + FLOPs per image -> MFU.
- memory: bench/bench_memory.py (the estimate, to compare with what the study measures).
- study:  `cifake run --preset report` with [run] model = STANDIN, in this process, each stage wrapped
          in torch.cuda.max_memory_allocated (reset per stage); the T4's 15 GB budget checked per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("bench", "embed", "memory", "study")


def _bench_json(script: str, args: list[str]) -> dict:
    cmd = [sys.executable, str(HERE / script), "--json", *args]
    print(f"[gpu_study] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}", "command": cmd[1:]}
    return json.loads(proc.stdout)


def part_bench(a) -> dict:
    return {str(b): _bench_json("bench_finetune.py", [
        "--model", a.standin, "--device", "cuda", "--batch-size", str(b), "--steps", str(a.steps),
        "--warmup", str(a.warmup), "--variants", a.variants]) for b in a.batch_sizes}


def part_embed(a) -> dict:
    """Embedding extraction img/s (bench_zeroshot) and its MFU from the forward's counted FLOPs."""
    import torch

    from cifake_lib.clip.models import inference_dtype, load_clip
    from cifake_lib.methods import speed

    r = _bench_json("bench_zeroshot.py", ["--model", a.standin, "--device", "cuda", "--skip", "prompts",
                                          "--images", str(a.embed_images), "--batch-size", str(a.embed_batch)])
    clip, _ = load_clip(a.standin, device="cuda", dtype=inference_dtype("cuda"))
    size = clip.config.vision_config.image_size
    x = torch.randn(8, 3, size, size, device="cuda", dtype=inference_dtype("cuda"))
    with torch.no_grad():
        flops = speed.count_flops(lambda: clip.get_image_features(pixel_values=x))["total"] / len(x)
    peak = speed.device_peak_tflops("cuda", "fp16")
    t = r.get("throughput", {})
    r["gflops_per_image"] = round(flops / 1e9, 4)
    for key in ("end_to_end_img_s", "model_only_img_s"):
        if key in t:
            r[key.replace("img_s", "mfu")] = speed.mfu(t[key], flops, peak)
    return r


def part_memory(a) -> dict:
    return _bench_json("bench_memory.py", ["--model", a.standin])


def part_study(a, out: Path) -> dict:
    """`cifake run --preset report` with the stand-in, each stage's peak GPU memory recorded."""
    import torch

    from cifake_lib.app import pipeline
    from cifake_lib.methods.memory import T4_BUDGET_GIB
    from cifake_lib.methods.speed import peak_gpu_memory

    config = out / "standin.toml"
    config.write_text(f'[run]\nmodel = "{Path(a.standin).resolve()}"\n')
    peaks: list[float | None] = []
    # Until the pipeline records peak memory itself: wrap run_step, which runs one step;
    # skipped steps do not reach it.
    original = pipeline.run_step

    def measured(*args, **kwargs):
        with peak_gpu_memory() as mem:
            result = original(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        peaks.append(mem.peak_mb)
        return result

    pipeline.run_step = measured
    start = time.perf_counter()
    try:
        record = pipeline.run_study(preset=a.preset, data=a.data, config_file=config, out=out / "study")
    except Exception as e:  # a failed stage (e.g. out of memory): keep the steps that ran, and why
        saved = out / "study" / "pipeline.json"
        record = json.loads(saved.read_text()) if saved.is_file() else {"steps": []}
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        pipeline.run_step = original
    ran = [s for s in record["steps"] if s["status"] != "skipped"]
    for step, peak in zip(ran, peaks, strict=False):
        step.setdefault("peak_gpu_mb", peak)
    for step in record["steps"]:
        mb = step.get("peak_gpu_mb")
        step["fits_t4"] = None if mb is None else mb / 1024 <= T4_BUDGET_GIB
    record["total_seconds"] = round(time.perf_counter() - start, 1)
    return record


def compile_speedup(r: dict, device: str) -> str:
    """Compiled over eager end-to-end img/s (same optimizer and loss): the figure "auto" compiles on."""
    rows = {(v["compile"], v["optimizer"], v["loss"]): v["end_to_end_images_per_second"] for v in r["variants"]}
    ratios = [rows[("on", o, loss)] / rows[("off", o, loss)] for c, o, loss in rows
              if c == "off" and rows.get(("on", o, loss)) and rows[("off", o, loss)]]
    if not ratios:
        return "compile speed-up: not measured (no end-to-end pair of eager and compiled runs)"
    low = min(ratios)
    return (f"compile speed-up, end to end: {', '.join(f'{x:.2f}x' for x in ratios)}; for `--compile auto` to "
            f"compile on this GPU, add {{r\"\\b{device.replace('NVIDIA ', '')}\\b\": {low:.2f}}} to "
            "cifake_lib.methods.speed.COMPILE_SPEEDUP when it is at least AUTO_COMPILE_MIN")


def markdown(result: dict) -> str:
    lines = [f"# GPU study: {result['device']}, torch {result['torch']}", ""]
    for batch, r in result.get("bench", {}).items():
        if "variants" not in r:
            lines += [f"bench at batch {batch}: {r.get('error')}", ""]
            continue
        lines += [f"## Fine-tuning, ViT-B/32 stand-in, batch {batch}, {r['mixed_precision']} "
                  f"(peak {r['peak_tflops']} TFLOP/s)", "",
                  "| variant | model img/s | end-to-end img/s | GFLOP/img | TFLOP/s | MFU | e2e MFU | peak MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for v in r["variants"]:
            lines.append(f"| {v['variant']} | {v['model_only_images_per_second']} | "
                         f"{v['end_to_end_images_per_second']} | {v['gflops_per_image']} | {v['model_only_tflops']} | "
                         f"{v['model_only_mfu']} | {v['end_to_end_mfu']} | {v['peak_gpu_mb']} |")
        lines += [compile_speedup(r, result["device"]), ""]
    if "embed" in result:
        e = result["embed"]
        lines += ["## Embedding extraction (fp16)", "", "```", json.dumps(e, indent=1), "```", ""]
    if "study" in result:
        s = result["study"]
        lines += [f"## `cifake run --preset {s.get('preset')}`, data {s.get('data')}, stand-in: "
                  f"{s.get('total_seconds')} s in all" + (f" (stopped: {s['error']})" if s.get("error") else ""), "",
                  "| stage | status | seconds | peak GPU MB | fits T4 |", "|---|---|---:|---:|---|"]
        lines += [f"| {x['name']} | {x['status']} | {x['seconds']} | {x.get('peak_gpu_mb')} | {x.get('fits_t4')} |"
                  for x in s["steps"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--standin", required=True, help="a ViT-B/32 CLIP folder in Hugging Face format (config, "
                    "preprocessor, tokenizer; random weights do for speed and memory)")
    ap.add_argument("--data", default=os.environ.get("CIFAKE_ARCHIVE"), help="full CIFAKE (default $CIFAKE_ARCHIVE)")
    ap.add_argument("--out", type=Path, default=Path("gpu_study"))
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--batch-sizes", default="128,256", help="fine-tuning batch sizes to bench (default 128,256)")
    ap.add_argument("--variants", default="all", help="bench_finetune --variants (default all)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--embed-images", type=int, default=32768)
    ap.add_argument("--embed-batch", type=int, default=1024)
    ap.add_argument("--preset", choices=("report", "smoke"), default="report", help="the study's preset")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run without CUDA (peak memory n/a): a dry run of the plumbing, e.g. --only study "
                         "--preset smoke --standin TINY_CLIP")
    a = ap.parse_args(argv)
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(set(parts) - set(PARTS))}; known: {', '.join(PARTS)}")
    if "study" in parts and not a.data:
        ap.error("the study part needs the full CIFAKE archive: --data or $CIFAKE_ARCHIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if not torch.cuda.is_available() and not a.allow_cpu:
        ap.error("no CUDA device: this study measures a GPU (--allow-cpu for a dry run)")
    from cifake_lib.core.files import write_json, write_text_atomic

    a.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
    result = {"device": device, "torch": torch.__version__, "standin": a.standin}
    steps = {"bench": part_bench, "embed": part_embed, "memory": part_memory,
             "study": lambda args: part_study(args, a.out)}
    for part in parts:
        start = time.perf_counter()
        result[part] = steps[part](a)
        result.setdefault("part_seconds", {})[part] = round(time.perf_counter() - start, 1)
        write_json(a.out / "gpu_study.json", result)
        write_text_atomic(a.out / "gpu_study.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
