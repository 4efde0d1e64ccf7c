"""Tiny offline models for every backbone family, and full-size stand-ins for benchmarks.

Each writer saves a randomly initialised model of the family's real classes with
`save_pretrained`, so it goes through exactly the code path of the Hub checkpoint it stands for;
only the sizes differ:

- "clip": `CLIPModel` + `CLIPProcessor` (openai/clip-vit-base-patch32's path), a real byte-level
  BPE tokenizer with a small vocabulary;
- "siglip": `SiglipModel` + `SiglipProcessor` with a `GemmaTokenizer` (SigLIP 2's tokenizer
  class), a small BPE vocabulary, prompts padded to 64 tokens as SigLIP was trained;
- "dinov2": `Dinov2Model` + `BitImageProcessor` (facebook/dinov2-base's path), image only.

Shapes: "tiny" learns CIFAKE in CPU minutes (32 px input, patch 4, width 64, 2 blocks); the
others have the published dimensions of the model they are named after, for memory and speed
checks (accuracy meaningless: random weights).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from cifake_lib.clip.models import image_processor_class, quiet_transformers
from cifake_lib.core.backbones import TINY_MARK
from cifake_lib.core.files import follow_umask

# OpenAI's CLIP normalisation, which the tiny CLIP shares so preprocessing code paths match.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's processor
IMAGENET_STD = (0.229, 0.224, 0.225)

_TINY = dict(image_size=32, patch_size=4, vision_hidden=64, vision_layers=2, vision_heads=2,
             text_hidden=64, text_layers=2, text_heads=2, projection_dim=64)

# Model shapes per family. "tiny" for tests and the smoke preset; the others published dimensions.
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "clip": {
        "tiny": _TINY,
        # openai/clip-vit-*: CLIP's 49,408-token vocabulary, 77-token context
        "vit-b-32": dict(image_size=224, patch_size=32, vision_hidden=768, vision_layers=12, vision_heads=12,
                         text_hidden=512, text_layers=12, text_heads=8, projection_dim=512, vocab_size=49_408),
        "vit-b-16": dict(image_size=224, patch_size=16, vision_hidden=768, vision_layers=12, vision_heads=12,
                         text_hidden=512, text_layers=12, text_heads=8, projection_dim=512, vocab_size=49_408),
        "vit-l-14": dict(image_size=224, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                         text_hidden=768, text_layers=12, text_heads=12, projection_dim=768, vocab_size=49_408),
    },
    "siglip": {
        "tiny": _TINY,
        # google/siglip2-base-patch16-224: ViT-B/16 both towers, Gemma's 256k vocabulary
        "siglip2-base": dict(image_size=224, patch_size=16, vision_hidden=768, vision_layers=12, vision_heads=12,
                             text_hidden=768, text_layers=12, text_heads=12, vocab_size=256_000),
    },
    "dinov2": {
        "tiny": dict(_TINY, resize=36),  # resized to 36 then cropped to 32, as 256 -> 224 at full size
        # facebook/dinov2-base: ViT-B/14, position grid for 518 px, used at 224 (resize 256, crop 224)
        "dinov2-base": dict(image_size=518, crop=224, resize=256, patch_size=14, vision_hidden=768,
                            vision_layers=12, vision_heads=12),
    },
}
FAMILY_NAMES = tuple(SHAPES)  # as `cifake tiny-model --family` spells them

# Words the tiny tokenizers learn merges for: the prompt vocabulary of this project.
_TOKENIZER_CORPUS = """
a an the of this is photo photograph picture image real authentic genuine natural camera
taken with by fake synthetic generated ai-generated ai artificial intelligence computer
rendered diffusion stable model machine made digital art generative neural network
low resolution small blurry pixelated tiny cropped close-up
airplane automobile bird cat deer dog frog horse ship truck car plane animal vehicle
"""


def write_tiny_model(out_dir: str | os.PathLike, family: str = "clip", *, seed: int = 0, shape: str = "tiny") -> Path:
    """A randomly initialised model of `family` ("clip", "siglip", "dinov2") written to `out_dir`
    with its processor, loadable by `models.load_backbone`; same seed, same weights."""
    if family not in SHAPES:
        raise ValueError(f"family must be one of {', '.join(SHAPES)}, got {family!r}")
    if shape not in SHAPES[family]:
        raise ValueError(f"{family} shapes: {', '.join(SHAPES[family])}; got {shape!r}")
    writer = {"clip": write_tiny_clip, "siglip": _write_siglip, "dinov2": _write_dinov2}[family]
    return writer(out_dir, seed=seed, shape=shape)


def _save(model, processor, out: Path, family: str, shape: str, seed: int) -> Path:
    with quiet_transformers():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    follow_umask(out)  # save_pretrained's safetensors file is 0600 whatever the umask
    (out / TINY_MARK).write_text(json.dumps({"family": family, "shape": shape, "seed": seed}, indent=2) + "\n")
    return out


def write_tiny_clip(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    shape: str = "tiny",
    num_merges: int = 400,
) -> Path:
    """Write a randomly initialised CLIPModel + CLIPProcessor to `out_dir` and return the path.

    Same seed, same weights. `shape="tiny"` takes 32x32 input with patch 4; `"vit-b-32"` has
    ViT-B/32's sizes (224 input, patch 32) for benchmarks. The tokenizer is a real byte-level BPE
    with a small vocabulary, saved as files that `CLIPProcessor.from_pretrained` reads.
    """
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    if shape not in SHAPES["clip"]:
        raise ValueError(f"shape must be one of {sorted(SHAPES['clip'])}, got {shape!r}")
    s = SHAPES["clip"][shape]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    vocab, merges = _train_bpe(_TOKENIZER_CORPUS.split(), num_merges)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    # eos must not be 2: that id switches CLIP's text pooling to its legacy argmax rule.
    assert eos != 2 and tokenizer.convert_tokens_to_ids("<|endoftext|>") == eos
    torch.manual_seed(seed)
    model = CLIPModel(_clip_config(s, len(vocab), bos, eos))
    image_processor = image_processor_class("clip")(
        size={"shortest_edge": s["image_size"]},
        crop_size={"height": s["image_size"], "width": s["image_size"]},
        resample=3,  # bicubic, as OpenAI's CLIP
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return _save(model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), out, "clip", shape, seed)


def _clip_config(s: dict[str, Any], vocab_size: int, bos: int, eos: int):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text_config = CLIPTextConfig(
        vocab_size=s.get("vocab_size", vocab_size), hidden_size=s["text_hidden"], intermediate_size=4 * s["text_hidden"],
        num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
        max_position_embeddings=77, projection_dim=s["projection_dim"],
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )
    vision_config = CLIPVisionConfig(
        image_size=s["image_size"], patch_size=s["patch_size"], hidden_size=s["vision_hidden"],
        intermediate_size=4 * s["vision_hidden"], num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"], projection_dim=s["projection_dim"],
    )
    return CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                      projection_dim=s["projection_dim"])


def _siglip_config(s: dict[str, Any], vocab_size: int, pad: int, bos: int, eos: int):
    from transformers import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

    text = SiglipTextConfig(vocab_size=s.get("vocab_size", vocab_size), hidden_size=s["text_hidden"],
                            intermediate_size=4 * s["text_hidden"], num_hidden_layers=s["text_layers"],
                            num_attention_heads=s["text_heads"], max_position_embeddings=64,
                            pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    vision = SiglipVisionConfig(image_size=s["image_size"], patch_size=s["patch_size"], hidden_size=s["vision_hidden"],
                                intermediate_size=4 * s["vision_hidden"], num_hidden_layers=s["vision_layers"],
                                num_attention_heads=s["vision_heads"])
    with quiet_transformers():  # SiglipConfig first checks a default text config's ids, and says so
        return SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


def _dinov2_config(s: dict[str, Any]):
    from transformers import Dinov2Config

    return Dinov2Config(image_size=s["image_size"], patch_size=s["patch_size"], hidden_size=s["vision_hidden"],
                        num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"], mlp_ratio=4)


def meta_model(family: str, shape: str):
    """A model of the family and shape on the meta device: its structure and no memory (for FLOP
    counts). The vocabulary is the published one where the shape names it, else a small one."""
    from transformers import CLIPModel, Dinov2Model, SiglipModel

    s = SHAPES[family][shape]
    with torch.device("meta"):
        if family == "clip":
            return CLIPModel(_clip_config(s, 49_408, 49_406, 49_407))
        if family == "siglip":
            return SiglipModel(_siglip_config(s, 32_000, 0, 2, 1))
        return Dinov2Model(_dinov2_config(s))


def _gemma_tokenizer(num_merges: int = 300):
    """SigLIP 2's tokenizer class (`GemmaTokenizer`: BPE over characters, spaces as "▁", bytes as
    <0xNN> fallback) with merges learned on this project's prompt words; right padding, so the
    last position SigLIP pools is padding, as in its training."""
    from transformers import GemmaTokenizer

    words = ["\u2581" + w for w in _TOKENIZER_CORPUS.lower().split()]
    merges = _learn_merges([tuple(w) for w in words], num_merges)
    chars = sorted({c for w in words for c in w})
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + chars + ["".join(m) for m in merges]))}
    tok = GemmaTokenizer(vocab=vocab, merges=merges, padding_side="right")
    tok.model_max_length = 64
    return tok, vocab


def _write_siglip(out_dir: str | os.PathLike, *, seed: int = 0, shape: str = "tiny") -> Path:
    from transformers import SiglipModel, SiglipProcessor

    s = SHAPES["siglip"][shape]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = _gemma_tokenizer()
    config = _siglip_config(s, len(vocab), vocab["<pad>"], vocab["<bos>"], vocab["<eos>"])
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # SigLIP's own initialisation (Zhai et al., ICCV 2023): t' = log 10, b = -10
        model.logit_scale.fill_(math.log(10.0))  # transformers' init is log 1 and 0, which a sigmoid
        model.logit_bias.fill_(-10.0)  # loss on random features barely moves
    image_processor = image_processor_class("siglip")(
        size={"height": s["image_size"], "width": s["image_size"]}, resample=2,  # bilinear, as SigLIP's
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return _save(model, SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer), out, "siglip", shape,
                 seed)


def _write_dinov2(out_dir: str | os.PathLike, *, seed: int = 0, shape: str = "tiny") -> Path:
    from transformers import Dinov2Model

    s = SHAPES["dinov2"][shape]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Dinov2Model(_dinov2_config(s))
    crop = s.get("crop", s["image_size"])
    processor = image_processor_class("dinov2")(
        size={"shortest_edge": s["resize"]}, crop_size={"height": crop, "width": crop}, resample=3,  # bicubic
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_center_crop=True)
    return _save(model, processor, out, "dinov2", shape, seed)


def _learn_merges(words: list[tuple[str, ...]], num_merges: int) -> list[tuple[str, str]]:
    """BPE merges learned on `words` (sequences of symbols): the most frequent pair, each round."""
    corpus = Counter(words)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, freq in corpus.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[a, b] += freq
        if not pairs:
            break
        (a, b), _count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        corpus = Counter({_merge(word, a, b): freq for word, freq in corpus.items()})
    return merges


def _merge(word: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _train_bpe(words: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A minimal byte-level BPE learner in CLIP's format (end of word marked by `</w>`).

    The vocabulary covers every byte (so any text tokenises) plus merges learned on `words`.
    """
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    enc = _bytes_to_unicode()
    corpus = Counter()
    for w in words:
        chars = [enc[b] for b in w.lower().encode("utf-8")]
        corpus[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, freq in corpus.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[a, b] += freq
        if not pairs:
            break
        (a, b), _count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab_list.append(a + b)
        new_corpus = Counter()
        for word, freq in corpus.items():
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            new_corpus[tuple(merged)] += freq
        corpus = new_corpus
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return vocab, merges
