"""The fine-tuning methods by name: FLYP's loss, the CE ablation, CoOp prompt tuning, WiSE-FT,
training seeds, and bit-exact resume for each. Tiny offline CLIP on the CPU; real CIFAKE images
where a method must learn."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_finetune import _cfg, _data, _weights

from cifake_lib.clip.coop import CONTEXT_FILE, PromptContext
from cifake_lib.clip.head import normalize
from cifake_lib.clip.prompts import get_prompt_set
from cifake_lib.methods import finetune as ft
from cifake_lib.methods.checkpoints import latest_checkpoint
from cifake_lib.methods.finetune import FinetuneConfig, finetune, flyp_loss, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sample_data(sample_dir):
    from cifake_lib.data.load import load_cifake

    return load_cifake(str(sample_dir), val_fraction=0.1, seed=0, progress=False)


# --- FLYP's loss and captions --------------------------------------------------------------------


def _flyp_by_hand(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    """The symmetric in-batch loss written out: mean over rows of -log softmax at the diagonal."""
    s = scale * img @ txt.T
    def ce_diag(m: np.ndarray) -> float:
        m = m - m.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(m).sum(axis=1)) - np.diag(m)))
    return 0.5 * (ce_diag(s) + ce_diag(s.T))


def test_flyp_loss_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(5, 4))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = rng.normal(size=(5, 4))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    got = flyp_loss(torch.from_numpy(img), torch.from_numpy(txt), torch.tensor(7.0))
    assert float(got) == pytest.approx(_flyp_by_hand(img, txt, 7.0), rel=1e-12)
    # Two images, two captions, orthogonal and matched: loss = log(1 + e^-s) by hand.
    eye = torch.eye(2, dtype=torch.float64)
    assert float(flyp_loss(eye, eye, torch.tensor(3.0))) == pytest.approx(np.log1p(np.exp(-3.0)), rel=1e-12)


def test_flyp_loss_with_one_label_only_treats_identical_captions_as_negatives():
    """A batch of one label with one template: every caption is the same text, so each row's
    softmax is uniform over B equal logits when the image embeddings agree: loss = log B."""
    cap = normalize(torch.randn(1, 8, dtype=torch.float64)).repeat(4, 1)
    img = normalize(torch.randn(4, 8, dtype=torch.float64))
    loss = flyp_loss(img, cap, torch.tensor(50.0))
    assert float(loss) == pytest.approx(_flyp_by_hand(img.numpy(), cap.numpy(), 50.0), rel=1e-12)
    # The image->text half is exactly log B (equal captions); the text->image half is not.
    logits = 50.0 * img @ cap.T
    assert float(F.cross_entropy(logits, torch.arange(4))) == pytest.approx(np.log(4), rel=1e-12)
    assert float(loss) > 0.5 * np.log(4)


def test_captions_are_a_template_of_the_label_with_the_class_filled_in():
    ps = get_prompt_set("class_aware")
    texts, _, _ = ft.prompt_index(ps)
    choices = ft.caption_choices(ps)
    labels = np.repeat([0, 1], 200)
    classes = np.tile(np.array([3, -1, 7, 0]), 100)
    caps = ft.draw_captions(choices, labels, classes, seed=0, epoch=0)
    for y, c, k in zip(labels, classes, caps, strict=True):
        allowed = ps.texts(int(y), int(c)) if c >= 0 else ps.texts(int(y))
        assert texts[k] in allowed
    assert np.array_equal(caps, ft.draw_captions(choices, labels, classes, seed=0, epoch=0))  # seeded
    assert not np.array_equal(caps, ft.draw_captions(choices, labels, classes, seed=0, epoch=1))  # per epoch
    used = {texts[k] for k, y, c in zip(caps, labels, classes, strict=True) if y == 1 and c == 3}
    assert used == set(ps.texts(1, 3))  # every template of (FAKE, cat) drawn


def test_flyp_encodes_only_the_batch_captions(tiny_model_dir, monkeypatch):
    """The text tower sees the batch's distinct captions, never the whole prompt set."""
    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(tiny_model_dir)
    model = ft.ClipClassifier(clip, CLIPProcessor.from_pretrained(tiny_model_dir).tokenizer,
                              get_prompt_set("ensemble"))
    seen = []
    clip.text_model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]),
                                          with_kwargs=True)
    captions = torch.tensor([0, 3, 3, 0, 5, 3])
    out = model(torch.randn(6, 3, 32, 32), None, captions)
    assert seen == [3] and out.logits is None and out.text_embeds.shape == (6, out.image_embeds.shape[1])
    torch.testing.assert_close(out.text_embeds[1], out.text_embeds[2])


def test_flyp_learns_on_the_real_sample(tiny_model_dir, sample_data, tmp_path):
    """From a random tiny CLIP, --epochs 3 --lr 5e-4 as the CE test: FLYP reaches >= 0.65 test accuracy."""
    r = finetune(sample_data, _cfg(tiny_model_dir, tmp_path / "flyp", batch_size=64, max_steps=None, epochs=3,
                                   eval_every=None, log_every=20, save_every=10_000, prompts="ensemble"))
    assert r.outcome.status == "finished"
    assert r.metrics["accuracy"] >= 0.65, r.metrics["accuracy"]
    det = json.loads((tmp_path / "flyp" / "detector.json").read_text())
    run = json.loads((tmp_path / "flyp" / "run.json").read_text())
    assert det["loss"] == "flyp" and "FLYP" in det["loss_name"] and run["args"]["loss"] == "flyp"
    assert det["hyperparameters"]["flyp"]["warmup_steps"] == 500 and det["hyperparameters"]["ours"]["lr"] == 5e-4
    assert all(h["train_accuracy"] is None for h in r.outcome.history if h["kind"] == "train")


# --- CoOp ------------------------------------------------------------------------------------------


def test_prompt_tuning_keeps_clip_byte_identical_and_beats_untrained(tiny_model_dir, sample_data, tmp_path):
    """CoOp on the real sample: CLIP untouched, only the context saved, and better than the same
    frozen model with its untrained context (on a random tiny CLIP the text tower can express
    little, so the gain is small; on a pretrained CLIP it is the method's point)."""
    from sklearn.metrics import roc_auc_score
    from transformers import CLIPProcessor

    from cifake_lib.methods.detectors import load_detector
    from cifake_lib.methods.zeroshot import ClipDetector

    out = tmp_path / "coop"
    cfg = _cfg(tiny_model_dir, out, train="prompt", n_ctx=4, prompt_lr=2e-3, batch_size=64, max_steps=200,
               eval_every=50)
    assert cfg.loss == "ce"  # CoOp's objective
    r = finetune(sample_data, cfg)
    base = _weights(Path(tiny_model_dir) / "model.safetensors")
    exported = _weights(out / "model" / "model.safetensors")
    assert base.keys() == exported.keys() and all(torch.equal(base[k], exported[k]) for k in base)
    ckpt = _weights(latest_checkpoint(out) / "model.safetensors")
    assert list(ckpt) == ["ctx"] and ckpt["ctx"].shape[0] == 4  # only the context learns and is saved
    det = json.loads((out / "detector.json").read_text())
    assert det["prompt_context"] == CONTEXT_FILE and det["n_ctx"] == 4 and det["train"] == "prompt"
    # The untrained model: the same frozen CLIP with the context as initialised.
    tok = CLIPProcessor.from_pretrained(tiny_model_dir).tokenizer
    untrained = ClipDetector.from_pretrained(tiny_model_dir, "plain", device="cpu",
                                             context=PromptContext.create(
                                                 ClipDetector.from_pretrained(tiny_model_dir, "plain").model,
                                                 tok, 4, seed=cfg.seed))
    p0 = untrained.predict_proba(sample_data.test.images)
    auc0 = roc_auc_score(sample_data.test.labels, p0)
    assert r.metrics["roc_auc"] > auc0 + 0.003, (r.metrics["roc_auc"], auc0)
    vals = [h for h in r.outcome.history if h["kind"] == "val"]
    first_val_loss = ft.validation_scores(
        sample_data.val.labels,
        np.stack([np.log1p(-untrained.predict_proba(sample_data.val.images)),
                  np.log(untrained.predict_proba(sample_data.val.images))], axis=1))["val_loss"]
    assert min(h["val_loss"] for h in vals) < first_val_loss
    # load_detector reads the context back and scores exactly like the run.
    loaded = load_detector(out, device="cpu")
    assert loaded.context is not None and loaded.context.n_ctx == 4
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    p = loaded.predict_proba(sample_data.test.images[:16], classes=sample_data.test.classes[:16])
    np.testing.assert_allclose(p, [float(x["p_fake"]) for x in preds[:16]], atol=1e-6)


def test_prompt_context_round_trip(tiny_model_dir, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(tiny_model_dir)
    tok = CLIPProcessor.from_pretrained(tiny_model_dir).tokenizer
    ctx = PromptContext.create(clip, tok, 4, seed=3)
    assert ctx.input_ids.shape[0] == 2 and (ctx.input_ids[:, 1:5] == ctx.input_ids[0, 0]).all()
    loaded = PromptContext.load(ctx.save(tmp_path / "c.safetensors"), tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded.rows(clip), ctx.rows(clip))
    # The context changes the label embeddings (the hook is active), and only while encoding.
    with torch.no_grad():
        other = PromptContext.create(clip, tok, 4, seed=4).rows(clip)
    assert not torch.allclose(other, ctx.rows(clip).detach())
    assert not clip.text_model.embeddings.token_embedding._forward_hooks


# --- WiSE-FT ---------------------------------------------------------------------------------------


def test_wise_ft_alpha_0_and_1_reproduce_the_two_models(tiny_model_dir, tmp_path):
    from cifake_lib.methods.wise_ft import interpolate
    from cifake_lib.methods.zeroshot import ClipDetector

    data = _data()
    out = tmp_path / "w"
    r = finetune(data, _cfg(tiny_model_dir, out, max_steps=6, wise_ft="0,0.5,1", loss="ce"))
    rows = list(csv.DictReader(open(out / "wise_ft.csv")))
    assert [float(x["alpha"]) for x in rows] == [0.0, 0.5, 1.0]
    assert sum(x["chosen"] == "True" for x in rows) == 1

    def val_scores(model_dir):
        det = ClipDetector.from_pretrained(model_dir, "plain", device="cpu")
        p = det.predict_proba(data.val.images, classes=data.val.classes)
        from sklearn.metrics import roc_auc_score

        return roc_auc_score(data.val.labels, p), ((p >= 0.5) == data.val.labels).mean()

    ft_dir = out / ("model_finetuned" if (out / "model_finetuned").is_dir() else "model")
    for row, model_dir in ((rows[0], tiny_model_dir), (rows[-1], ft_dir)):
        auc, acc = val_scores(model_dir)
        assert float(row["val_roc_auc"]) == pytest.approx(auc, abs=1e-12)
        assert float(row["val_accuracy"]) == pytest.approx(acc, abs=1e-12)
    det = json.loads((out / "detector.json").read_text())
    chosen = next(float(x["alpha"]) for x in rows if x["chosen"] == "True")
    best = max(rows, key=lambda x: (float(x["val_roc_auc"]), float(x["alpha"])))
    assert det["wise_ft_alpha"] == chosen == float(best["alpha"]) and r.metrics is not None
    a = {"w": torch.ones(2), "n": torch.tensor([3])}
    b = {"w": torch.full((2,), 3.0), "n": torch.tensor([5])}
    mixed = interpolate(a, b, 0.25)
    torch.testing.assert_close(mixed["w"], torch.full((2,), 1.5))
    assert mixed["n"].item() == 5  # integer buffers are not mixed


# --- seeds and resume ------------------------------------------------------------------------------


def test_two_seeds_same_split_different_weights(tiny_model_dir, tmp_path):
    data = _data(n_val=0)
    a = train(data, _cfg(tiny_model_dir, tmp_path / "s0", max_steps=3, seed=0))
    b = train(data, _cfg(tiny_model_dir, tmp_path / "s1", max_steps=3, seed=1))
    sa = json.loads((latest_checkpoint(a.out) / "state.json").read_text())
    sb = json.loads((latest_checkpoint(b.out) / "state.json").read_text())
    assert sa["data_fingerprint"] == sb["data_fingerprint"]  # the same train/val images
    wa, wb = _weights(a.out / "model" / "model.safetensors"), _weights(b.out / "model" / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("kw", [dict(loss="flyp", prompts="class_aware"), dict(loss="ce"),
                                dict(loss="clip-label-aware"), dict(train="prompt")],
                         ids=["flyp", "ce", "clip-label-aware", "prompt"])
def test_resume_is_bit_exact(tiny_model_dir, tmp_path, kw):
    data = _data()
    cfg = _cfg(tiny_model_dir, tmp_path / "straight", max_steps=8, eval_every=3, **kw)
    train(data, cfg)
    split = replace(cfg, out=str(tmp_path / "split"), stop_after=5)
    assert train(data, split).status == "stopped"
    train(data, replace(split, resume=True, stop_after=None))
    for name in ("model.safetensors",):
        a = _weights(latest_checkpoint(tmp_path / "straight") / name)
        b = _weights(latest_checkpoint(tmp_path / "split") / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "images_per_second"} for h in hs]  # noqa: E731
    assert strip(ft.load_history(tmp_path / "split")) == strip(ft.load_history(tmp_path / "straight"))


def test_config_choices_and_refusals():
    assert FinetuneConfig(train="prompt").loss == "ce"  # CoOp's objective by default
    with pytest.raises(ValueError, match="train=prompt"):
        FinetuneConfig(train="prompt", loss="clip-label-aware").validate()
    with pytest.raises(ValueError, match="wise_ft"):
        FinetuneConfig(train="prompt", wise_ft="0,1").validate()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        FinetuneConfig(wise_ft="0,1.5")
    assert FinetuneConfig(wise_ft="1, 0.5,0").wise_ft == [0.0, 0.5, 1.0]
    assert FinetuneConfig(lr=1e-5, prompt_lr=2e-3, train="prompt").base_lr == 2e-3


def test_report_preset_runs_flyp_with_wise_ft_and_the_ce_and_prompt_ablations(tmp_path):
    from cifake_lib.app.pipeline import load_config, plan_study

    plan = plan_study(load_config("report"), tmp_path, "data")
    ft_steps = {s.name: s for s in plan.steps if s.stage == "finetune" and "seed" not in s.name}
    assert set(ft_steps) == {"flyp", "image", "text", "ce", "prompt", "lora", "adapter"}
    main, ce, prompt = (ft_steps[n].cfg for n in ("flyp", "ce", "prompt"))
    assert main.loss == "flyp" and main.wise_ft == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ce.loss == "ce" and ce.train == "both" and ce.wise_ft is None
    assert prompt.train == "prompt" and prompt.loss == "ce" and prompt.wise_ft is None
    assert ft_steps["image"].cfg.train == "image" and ft_steps["image"].cfg.wise_ft is None
