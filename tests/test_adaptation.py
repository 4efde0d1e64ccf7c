"""LoRA (peft), CLIP-Adapter and the layer-wise probe, with what each run costs. Tiny offline CLIP
on the CPU; a few hundred real CIFAKE images where a method must learn; peft, the CLIP-Adapter
formula and the ordinary probe as oracles."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_finetune import _cfg, _data, _weights

from cifake_lib.clip.adapter import ADAPTER_FILE, ClipAdapter
from cifake_lib.methods import finetune as ft
from cifake_lib.methods.checkpoints import latest_checkpoint
from cifake_lib.methods.finetune import FinetuneConfig, finetune, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_real(sample_dir):
    """840 real sample images: 640 train (128 of them validation), 200 test."""
    from cifake_lib.data.load import load_cifake

    return load_cifake(str(sample_dir), subset=(640, 200), val_fraction=0.2, seed=0, progress=False)


def _tiny_clip(path):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(path, dtype=torch.float32).eval()


def _zero_shot_auc(model_dir, data, prompts: str) -> float:
    from sklearn.metrics import roc_auc_score

    from cifake_lib.methods.zeroshot import ClipDetector

    det = ClipDetector.from_pretrained(model_dir, prompts, device="cpu")
    return float(roc_auc_score(data.test.labels, det.predict_proba(data.test.images)))


def _p_fake(out, n: int) -> list[float]:
    import csv

    with open(out / "predictions.csv", newline="") as f:
        return [float(row["p_fake"]) for row, _ in zip(csv.DictReader(f), range(n), strict=False)]


# --- LoRA ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("towers", ["both", "vision"])
def test_lora_adds_exactly_the_parameters_peft_reports(tiny_model_dir, towers):
    from peft import get_peft_model

    from cifake_lib.methods.lora import attach_lora, lora_config, set_lora_trainable

    cfg = FinetuneConfig(train="lora", lora_rank=4, lora_towers=towers)
    clip = _tiny_clip(tiny_model_dir)
    before = sum(p.numel() for p in clip.parameters())
    attach_lora(clip, cfg)
    added = sum(p.numel() for p in clip.parameters()) - before
    base = _tiny_clip(tiny_model_dir)
    trainable, total = get_peft_model(base, lora_config(cfg, base)).get_nb_trainable_parameters()
    assert set_lora_trainable(clip) == added == trainable and total == before + added
    layers = clip.config.vision_config.num_hidden_layers + (clip.config.text_config.num_hidden_layers
                                                            if towers == "both" else 0)
    assert added == layers * 4 * 4 * 2 * clip.config.vision_config.hidden_size  # (q, k, v, out) x r x (in + out)


def test_lora_keeps_clip_byte_identical_and_merges_like_peft(tiny_model_dir, tmp_path):
    """Training moves only the adapters; the exported model is the merge peft makes of the saved
    adapter folder; merged and unmerged logits agree to 1e-5."""
    from peft import PeftModel

    out = tmp_path / "lora"
    cfg = _cfg(tiny_model_dir, out, train="lora", lora_rank=4, lora_lr=5e-3, max_steps=4)
    setup, _ = ft.build(_data(), cfg, ft.checked(cfg))
    state = ft.TrainState()
    perm = ft.epoch_permutation(len(setup.train), cfg.seed, 0)
    for _ in range(4):
        ft.train_step(setup, state, perm)
        state.advance(setup.steps_per_epoch)
    base = _weights(tiny_model_dir / "model.safetensors")
    now = {k.replace(".base_layer.", "."): v for k, v in setup.clip.state_dict().items() if ".lora_" not in k}
    assert base.keys() == now.keys() and all(torch.equal(base[k], now[k]) for k in base)
    lora_b = [p for n, p in setup.clip.named_parameters() if ".lora_B." in n]
    assert any(float(p.abs().max()) > 0 for p in lora_b)  # they learned (B starts at zero)
    setup.export()
    exported = _weights(out / "model" / "model.safetensors")
    assert not any(".lora_" in k or "base_layer" in k for k in exported)
    peft_merged = PeftModel.from_pretrained(_tiny_clip(tiny_model_dir), out / "lora_adapter").merge_and_unload()
    for k, v in peft_merged.state_dict().items():
        torch.testing.assert_close(exported[k], v, atol=1e-6, rtol=0)
    x = torch.randn(4, 3, 32, 32)
    merged = ft.ClipClassifier(_tiny_clip(out / "model"), setup.processor.tokenizer, setup.prompts).eval()
    with torch.no_grad():
        setup.model.eval()
        torch.testing.assert_close(merged(x).logits, setup.model(x).logits, atol=1e-5, rtol=0)


def test_lora_learns_on_the_real_sample_and_records_its_cost(tiny_model_dir, small_real, tmp_path):
    from cifake_lib.methods.detectors import load_detector

    out = tmp_path / "lora_run"
    r = finetune(small_real, _cfg(tiny_model_dir, out, train="lora", lora_rank=16, lora_lr=1e-2, batch_size=32,
                                  max_steps=48, eval_every=16))
    assert r.metrics["roc_auc"] > _zero_shot_auc(tiny_model_dir, small_real, "plain") + 0.02
    det = json.loads((out / "detector.json").read_text())
    assert det["kind"] == "clip" and det["train"] == "lora" and "LoRA" in det["method"]
    assert (out / "lora_adapter" / "adapter_config.json").is_file()
    cost = json.loads((out / "metrics.json").read_text())["cost"]
    assert cost == json.loads((out / "run.json").read_text())["cost"]
    assert cost["peak_memory_kind"] == "cpu peak RSS" and cost["peak_memory_bytes"] > 0
    assert 0 < cost["trainable_params"] < cost["total_params"]
    assert cost["train_images"] == 48 * 32 and cost["train_images_per_second"] > 0
    assert cost["device_seconds_per_1k_images"] == pytest.approx(1000 * cost["train_seconds"] / cost["train_images"])
    loaded = load_detector(out, device="cpu")  # a plain CLIP folder: no adapter needed to score
    p = loaded.predict_proba(small_real.test.images[:8])
    preds = _p_fake(out, 8)
    np.testing.assert_allclose(p, preds, atol=1e-6)


# --- CLIP-Adapter ----------------------------------------------------------------------------------


def test_adapter_is_clip_adapters_formula_and_ratio_0_is_zero_shot(tiny_model_dir, small_real):
    from cifake_lib.methods.zeroshot import ClipDetector

    torch.manual_seed(0)
    adapter = ClipAdapter(64, reduction=4, ratio=0.2)
    x = torch.randn(5, 64)
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight
    expected = 0.2 * torch.relu(torch.relu(x @ w1.T) @ w2.T) + 0.8 * x  # Gao et al.'s residual mix
    torch.testing.assert_close(adapter(x), expected)
    images = small_real.test.images[:32]
    plain = ClipDetector.from_pretrained(tiny_model_dir, "ensemble", device="cpu")
    zero = ClipDetector(plain.model, plain.processor, "ensemble", adapter=replace_ratio(adapter, 0.0))
    np.testing.assert_array_equal(zero.predict_logits(images), plain.predict_logits(images))
    assert not np.allclose(ClipDetector(plain.model, plain.processor, "ensemble", adapter=adapter)
                           .predict_logits(images), plain.predict_logits(images))


def replace_ratio(adapter: ClipAdapter, ratio: float) -> ClipAdapter:
    other = copy.deepcopy(adapter)
    other.ratio = ratio
    return other


def test_adapter_learns_on_the_real_sample_and_loads_back(tiny_model_dir, small_real, tmp_path):
    from cifake_lib.methods.detectors import load_detector

    out = tmp_path / "adapter_run"
    # a random tiny CLIP's zero-shot head is weak: a larger residual ratio than CLIP-Adapter's 0.2
    cfg = _cfg(tiny_model_dir, out, train="adapter", adapter_lr=2e-2, adapter_ratio=0.5, batch_size=32,
               max_steps=48, eval_every=16)
    assert cfg.loss == "ce"
    r = finetune(small_real, cfg)
    assert r.metrics["roc_auc"] > _zero_shot_auc(tiny_model_dir, small_real, "plain") + 0.01
    base, exported = _weights(tiny_model_dir / "model.safetensors"), _weights(out / "model" / "model.safetensors")
    assert base.keys() == exported.keys() and all(torch.equal(base[k], exported[k]) for k in base)
    assert list(_weights(latest_checkpoint(out) / "model.safetensors")) == ["fc.0.weight", "fc.2.weight"]
    det = json.loads((out / "detector.json").read_text())
    assert det["clip_adapter"] == ADAPTER_FILE and det["ce_variant"] == "averaged class prompts"
    cost = json.loads((out / "metrics.json").read_text())["cost"]
    assert cost["trainable_params"] == 2 * 64 * 16
    loaded = load_detector(out, device="cpu")
    assert loaded.adapter is not None
    p = loaded.predict_proba(small_real.test.images[:8])
    preds = _p_fake(out, 8)
    np.testing.assert_allclose(p, preds, atol=1e-6)


# --- resume and settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(train="lora", lora_dropout=0.1), dict(train="lora", loss="ce"),
                                dict(train="adapter")], ids=["lora-flyp-dropout", "lora-ce", "adapter"])
def test_resume_is_bit_exact(tiny_model_dir, tmp_path, kw):
    data = _data()
    cfg = _cfg(tiny_model_dir, tmp_path / "straight", max_steps=8, eval_every=3, **kw)
    train(data, cfg)
    split = replace(cfg, out=str(tmp_path / "split"), stop_after=5)
    assert train(data, split).status == "stopped"
    train(data, replace(split, resume=True, stop_after=None))
    a = _weights(latest_checkpoint(tmp_path / "straight") / "model.safetensors")
    b = _weights(latest_checkpoint(tmp_path / "split") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "images_per_second"} for h in hs]  # noqa: E731
    assert strip(ft.load_history(tmp_path / "split")) == strip(ft.load_history(tmp_path / "straight"))


def test_settings_of_the_added_modules():
    assert FinetuneConfig(train="adapter").loss == "ce" and FinetuneConfig(train="lora").loss == "flyp"
    assert FinetuneConfig(train="lora", lora_lr=3e-4).base_lr == 3e-4
    with pytest.raises(ValueError, match="train=adapter"):
        FinetuneConfig(train="adapter", loss="clip-label-aware").validate()
    with pytest.raises(ValueError, match="lp_ft"):
        FinetuneConfig(train="lora", lp_ft=True).validate()
    with pytest.raises(ValueError, match="lora_towers"):
        FinetuneConfig(train="lora", lora_towers="neither").validate()
    assert "averaged class prompts" in ft.methods_text(FinetuneConfig(loss="ce"))
    flyp = ft.methods_text(FinetuneConfig())
    assert "one template per image per epoch" in flyp and "clamped at 100" in flyp


# --- the layer-wise probe --------------------------------------------------------------------------


def test_layer_probe_last_block_is_the_ordinary_probe(tiny_model_dir, small_real):
    from cifake_lib.clip.features import image_features
    from cifake_lib.clip.layers import layer_features, parse_layers
    from cifake_lib.methods.layer_probe import layer_rows
    from cifake_lib.methods.probe import fit_probe
    from cifake_lib.methods.zeroshot import load_for_inference

    clip, processor = load_for_inference(str(tiny_model_dir), "cpu")
    feats = {k: layer_features(clip, processor, s.images, batch_size=64)
             for k, s in (("train", small_real.train), ("val", small_real.val), ("test", small_real.test))}
    n = clip.config.vision_config.num_hidden_layers
    assert feats["train"].shape == (n, len(small_real.train), clip.config.projection_dim)
    final = {k: image_features(clip, processor, s.images, batch_size=64, progress=False)
             for k, s in (("train", small_real.train), ("val", small_real.val))}
    np.testing.assert_allclose(feats["train"][-1], final["train"], atol=1e-5)
    rows, fits = layer_rows(feats, small_real, parse_layers("all", n), n_boot=50)
    ordinary = fit_probe(final["train"], small_real.train.labels, final["val"], small_real.val.labels,
                         progress=False)
    assert fits[n].best == ordinary.best
    np.testing.assert_allclose(fits[n].probe.predict_proba(feats["val"][-1]),
                               ordinary.probe.predict_proba(final["val"]), atol=1e-6)
    assert [r["layer"] for r in rows] == list(range(1, n + 1)) and sum(r["chosen"] for r in rows) == 1
    assert parse_layers("-1,1", n) == [1, n]
    with pytest.raises(ValueError, match="outside"):
        parse_layers(str(n + 1), n)


def test_layer_probe_stage_learns_and_writes_its_files(tiny_model_dir, small_real, tmp_path):
    from cifake_lib import run_probe
    from cifake_lib.methods.config import ProbeConfig
    from cifake_lib.methods.detectors import load_detector

    out = tmp_path / "layers"
    r = run_probe(small_real, ProbeConfig(model=str(tiny_model_dir), layers="all", device="cpu", cache=False), out)
    m = r.metrics["probe:layers"]
    assert m["roc_auc"] > _zero_shot_auc(tiny_model_dir, small_real, "ensemble") + 0.02
    lines = (out / "layers.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 and lines[0].startswith("layer,C,")
    assert (out / "layers.png").stat().st_size > 1000 and json.loads((out / "run.json").read_text())["cost"]
    loaded = load_detector(out, device="cpu")
    assert loaded.layer == r.info["layer"]
    preds = _p_fake(out, 8)
    np.testing.assert_allclose(loaded.predict_proba(small_real.test.images[:8]), preds, atol=1e-6)


# --- the report's cost table and frontier ----------------------------------------------------------


def test_cost_table_summary_and_frontier_from_run_records(tmp_path):
    import statistics

    from cifake_lib.analysis.report import assemble_report
    from cifake_lib.analysis.report_costs import (
        COSTS_CSV,
        FRONTIER_FIGURE,
        cost_rows,
        cost_section,
        cost_summary,
    )
    from cifake_lib.methods.cost import cost_record

    rng = np.random.default_rng(0)
    runs = []
    for name, trainable in (("lora", 16_384), ("lora", 16_384), ("adapter", 2_048)):
        seconds = float(rng.uniform(5, 50))
        cost = cost_record(trainable_params=trainable, total_params=300_000, peak_memory_bytes=2**30,
                           peak_memory_kind="cpu peak RSS", train_seconds=seconds, train_images=1920, device="cpu")
        runs.append({"name": name, "run": {"cost": cost},
                     "metrics": {"roc_auc": float(rng.uniform(0.5, 0.9)), "roc_auc_ci95": [0.5, 0.95]}})
    runs.append({"name": "zeroshot:plain", "run": {}, "metrics": {"roc_auc": 0.6}})
    rows, missing = cost_rows(runs)
    assert missing == ["zeroshot:plain"] and [r["method"] for r in rows] == ["lora", "lora", "adapter"]
    assert rows[0]["device_seconds_per_1k_images"] == pytest.approx(1000 * runs[0]["run"]["cost"]["train_seconds"]
                                                                   / 1920)
    lora = next(r for r in cost_summary(rows) if r["method"] == "lora")
    aucs = [runs[0]["metrics"]["roc_auc"], runs[1]["metrics"]["roc_auc"]]
    assert lora["n_runs"] == 2 and lora["test_roc_auc"] == pytest.approx(statistics.fmean(aucs))
    assert lora["test_roc_auc_sd"] == pytest.approx(statistics.stdev(aucs)) and lora["peak_memory_gib"] == 1.0

    class _Study:
        pass

    study = _Study()
    study.runs = runs
    section = cost_section(study)
    path = assemble_report([section], tmp_path, title="costs")
    text = path.read_text()
    assert "trainable params" in text and "Not measured (no cost record): zeroshot:plain" in text
    assert (tmp_path / COSTS_CSV).read_text().count("\n") == 1 + 3
    assert (tmp_path / FRONTIER_FIGURE).stat().st_size > 5000
    fig = section.figures[FRONTIER_FIGURE]
    assert [len(ax.lines) > 0 for ax in fig.axes[:2]] == [True, True]


def test_cost_over_seeds_from_the_study_index(tmp_path):
    """The cost section's seed table: mean and sample sd of each cell's runs.csv rows (leak-free ROC
    AUC where re-evaluated), one row per (method, model, train size, input size), cells of one seed
    (and zero-shot, which trains nothing) left out; a CPU peak (the whole process's RSS) is not averaged."""
    import statistics

    from cifake_lib.analysis.report_costs import SEED_COSTS_CSV, cost_section, seed_cost_rows

    rng = np.random.default_rng(1)
    index = [{"method": "zeroshot", "model": "tiny", "train_size": "", "seed": "", "status": "complete",
              "roc_auc": "0.6", "trainable_params": "0"}]
    for method, trainable, seeds, size, kind in (("lora", 16_384, 3, "", "cuda max_memory_allocated"),
                                                 ("lora", 16_384, 2, "64", "cpu peak RSS"),
                                                 ("probe", 65, 1, "", "cpu peak RSS")):
        for seed in range(seeds):
            index.append({"method": method, "model": "tiny", "train_size": "", "seed": str(seed), "status": "complete",
                          "image_size": size, "roc_auc": str(rng.uniform(0.5, 0.9)),
                          "leak_free_roc_auc": str(rng.uniform(0.5, 0.9)), "trainable_params": str(trainable),
                          "total_params": "300000", "peak_memory_bytes": str(2**30 * (1 + seed)),
                          "peak_memory_kind": kind, "train_seconds": str(rng.uniform(5, 50)),
                          "train_images_per_second": "100.0", "device_seconds_per_1k_images": "10.0"})
    row, small = seed_cost_rows(index)
    lora = [r for r in index if r["method"] == "lora" and not r["image_size"]]
    aucs, secs = ([float(r[k]) for r in lora] for k in ("leak_free_roc_auc", "train_seconds"))
    assert row["method"] == "lora" and row["n_runs"] == 3 and row["trainable_params"] == 16_384
    assert (row["model"], row["image_size"], small["image_size"], small["n_runs"]) == ("tiny", "own", "64", 2)
    assert row["test_roc_auc"] == pytest.approx(statistics.fmean(aucs))
    assert row["test_roc_auc_sd"] == pytest.approx(statistics.stdev(aucs))
    assert row["train_seconds_sd"] == pytest.approx(statistics.stdev(secs)) and row["peak_memory_gib"] == 2.0
    assert "peak_memory_gib" not in small  # CPU: the process's peak so far, no method's own

    class _Study:
        runs = [{"name": "lora", "run": {"cost": {"trainable_params": 16_384, "total_params": 300_000,
                                                  "train_seconds": 1.0}}, "metrics": {"roc_auc": 0.7}}]

    section = cost_section(_Study(), index)
    text = "".join(section.blocks)
    assert (f"| lora | tiny | all | own | 3 | {statistics.fmean(aucs):.4f} ± {statistics.stdev(aucs):.4f} | 16,384 | "
            "2.0000 ± 1.0000 |" in text)
    assert SEED_COSTS_CSV in section.tables and "| probe |" not in text.split("Over training seeds")[1]


def test_frontier_draws_what_trains_nothing_and_separates_equal_costs():
    """Zero-shot (0 parameters, 0 s) is a point at 0 on both axes; two methods of one cost both show."""
    from cifake_lib.viz.cost_figures import _dodge, frontier_figure

    rows = [{"method": "zeroshot", "trainable_params": 0, "train_seconds": 0.0, "test_roc_auc": 0.61},
            {"method": "probe", "trainable_params": 65, "train_seconds": 3.0, "test_roc_auc": 0.78},
            {"method": "probe:layers", "trainable_params": 65, "train_seconds": 4.0, "test_roc_auc": 0.78}]
    fig = frontier_figure(rows)
    for ax in fig.axes[:2]:
        xs = [float(c.lines[0].get_xdata()[0]) for c in ax.containers]
        assert len(xs) == 3 and xs[0] == 0.0 and ax.get_xscale() == "symlog"
    params = [float(c.lines[0].get_xdata()[0]) for c in fig.axes[0].containers]
    assert params[1] != params[2] and params[1] * params[2] == pytest.approx(65 * 65)
    assert _dodge([5.0, 0.0, 0.0]) == [5.0, -0.075, 0.075]
