"""Loading CLIP (a Hub id or a local folder) and writing a tiny offline CLIP for tests.

The tiny CLIP is a real `CLIPModel` + `CLIPProcessor` saved with `save_pretrained`, so it
goes through exactly the code path of `openai/clip-vit-base-patch32`; only the sizes differ.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from cifake_lib.core.errors import CifakeError
from cifake_lib.core.files import follow_umask
from cifake_lib.core.network import looks_like_path, offline_unless_hub_reachable
from cifake_lib.core.settings import DEFAULT_MODEL
from cifake_lib.core.weights import DamagedWeights, check_model_folder

KNOWN_MODELS = (
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-large-patch14",
)

# OpenAI's CLIP normalisation, which the tiny model shares so preprocessing code paths match.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Model shapes: "tiny" learns CIFAKE in CPU minutes; "vit-b-32" has ViT-B/32's compute, for benchmarks.
SHAPES = {
    "tiny": dict(
        image_size=32, patch_size=4, vision_hidden=64, vision_layers=2, vision_heads=2,
        text_hidden=64, text_layers=2, text_heads=2, projection_dim=64,
    ),
    "vit-b-32": dict(
        image_size=224, patch_size=32, vision_hidden=768, vision_layers=12, vision_heads=12,
        text_hidden=512, text_layers=12, text_heads=8, projection_dim=512,
    ),
}

# Words the tiny tokenizer learns merges for: the prompt vocabulary of this project.
_TOKENIZER_CORPUS = """
a an the of this is photo photograph picture image real authentic genuine natural camera
taken with by fake synthetic generated ai-generated ai artificial intelligence computer
rendered diffusion stable model machine made digital art generative neural network
low resolution small blurry pixelated tiny cropped close-up
airplane automobile bird cat deer dog frog horse ship truck car plane animal vehicle
"""


class ModelUnavailable(CifakeError, OSError):
    """A Hub model that cannot be fetched (offline, unknown id): a clear message, CLI exit 2.
    Also an OSError, as transformers' own error was, for callers that catch that."""


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` if given ("cpu", "cuda", "cuda:1", "mps"), else CUDA, then Apple MPS, then CPU."""
    if prefer:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {prefer}: CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def inference_dtype(device: torch.device | str) -> torch.dtype:
    """Half precision on CUDA (inference only), float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Refuse, saying why and what to pass instead, a local folder CLIP cannot be loaded from:
    a run folder of another kind (a CNN run), a folder without config.json, or one whose weights
    are pickle files only (loading them could run code). Hub ids pass unchecked."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):  # a mistyped folder, not a Hub id: say so now, not after Hub retries
            raise CifakeError(f"{name}: no such folder (a local model folder was meant; a Hub id looks like "
                              "openai/clip-vit-base-patch32)")
        return
    wanted = ("--model wants a CLIP model folder written by save_pretrained (a fine-tune run's model/ "
              "folder, one from `cifake tiny-model`) or a Hub id such as openai/clip-vit-base-patch32")
    if not path.is_dir():
        raise CifakeError(f"{path}: a file, not a CLIP model folder; {wanted}")
    if not (path / "config.json").is_file():
        kind = None
        if (path / "detector.json").is_file():
            try:
                kind = json.loads((path / "detector.json").read_text(encoding="utf-8")).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = "unreadable"
        if kind:
            raise CifakeError(f"{path}: a {kind} run folder (detector.json), not a CLIP model; {wanted}")
        raise FileNotFoundError(f"{path}: not a CLIP model folder (no config.json); {wanted}")
    files = [f.name for f in path.iterdir() if f.is_file()]
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if Path(f).suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise CifakeError(
                f"{path}: only pickle weights found ({', '.join(pickles)}); cifake loads safetensors only, because "
                "loading a pickle can run code hidden in the file. If you trust its origin, convert it once: "
                f"python -c \"from transformers import CLIPModel; m = CLIPModel.from_pretrained(r'{path}'); "
                f"m.save_pretrained(r'{path}', safe_serialization=True)\"")
        raise CifakeError(f"{path}: no weights (*.safetensors) in this model folder; {wanted}")
    check_model_folder(path)  # a cut or pickled *.safetensors: one line naming it, before transformers


def load_clip(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """Load a `CLIPModel` and its `CLIPProcessor` from a Hub id or a local folder, in eval mode.

    Raises a clear error naming the id when it cannot be fetched (e.g. offline).
    """
    from transformers import CLIPModel

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    local = path.exists()
    check_model_source(name)
    source = str(path) if local else name
    device = pick_device(str(device)) if device is not None else pick_device()
    # A Hub id on a machine without the Hub: probe once (seconds), then load in offline mode, so
    # the local cache still serves and a missing model fails at once instead of after retries.
    with offline_unless_hub_reachable() if not local else nullcontext(False) as went_offline:
        try:
            with quiet_transformers():
                processor = load_processor(source)
                # SDPA: fused attention kernels, never the (tokens x tokens) scores in memory (speed.check_sdpa).
                model = CLIPModel.from_pretrained(source, dtype=dtype or torch.float32, attn_implementation="sdpa")
        except CifakeError:
            raise
        except (RuntimeError, ValueError) as e:  # weights of another shape than config.json says
            if not local:
                raise
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            if "mismatched_sizes" in first:
                first = "tensor shapes differ from those config.json describes; transformers' load report lists them"
            raise DamagedWeights(f"{path}: the weights do not fit the folder's config.json ({first[:300]})") from None
        except OSError as e:
            if local:
                raise FileNotFoundError(f"{path}: could not load a CLIP model from this folder ({e})") from None
            why = "the Hugging Face Hub cannot be reached and it is not in the local cache" if went_offline \
                else f"{type(e).__name__}"
            raise ModelUnavailable(
                f"could not load CLIP model {name!r} from the Hugging Face Hub ({why}). "
                "If this machine is offline, download it elsewhere and pass the local folder "
                "(--model DIR), or write a tiny offline model with `cifake tiny-model DIR`."
            ) from None
    model.to(device).eval()
    return model, processor


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars from transformers inside the block.

    Loading a model takes a second; a bar per load only fills notebooks with red stderr.
    Our own long work shows its progress through tqdm.
    """
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def image_processor_class() -> type:
    """`CLIPImageProcessor`, or its PIL twin when torchvision is absent.

    Without torchvision, transformers 5 falls back to the PIL class by itself but warns on every
    load. We only read the processor's settings (sizes, mean, std: `preprocess.ImagePreprocessor`
    works on tensors), which both classes hold alike, so we ask for the right one directly.
    """
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def load_processor(source: str | os.PathLike) -> Any:
    """`CLIPProcessor.from_pretrained(source)`, with the image processor of `image_processor_class`."""
    from transformers import AutoTokenizer, CLIPProcessor

    source = os.fspath(source)
    return CLIPProcessor(image_processor=image_processor_class().from_pretrained(source),
                         tokenizer=AutoTokenizer.from_pretrained(source))


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
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    s = SHAPES[shape]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    vocab, merges = _train_bpe(_TOKENIZER_CORPUS.split(), num_merges)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    # eos must not be 2: that id switches CLIP's text pooling to its legacy argmax rule.
    assert eos != 2 and tokenizer.convert_tokens_to_ids("<|endoftext|>") == eos

    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=s["text_hidden"], intermediate_size=4 * s["text_hidden"],
        num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
        max_position_embeddings=77, projection_dim=s["projection_dim"],
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )
    vision_config = CLIPVisionConfig(
        image_size=s["image_size"], patch_size=s["patch_size"], hidden_size=s["vision_hidden"],
        intermediate_size=4 * s["vision_hidden"], num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"], projection_dim=s["projection_dim"],
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
        projection_dim=s["projection_dim"],
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = image_processor_class()(
        size={"shortest_edge": s["image_size"]},
        crop_size={"height": s["image_size"], "width": s["image_size"]},
        resample=3,  # bicubic, as OpenAI's CLIP
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    with quiet_transformers():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    follow_umask(out)  # save_pretrained's safetensors file is 0600 whatever the umask
    (out / "TINY_MODEL.json").write_text(json.dumps({"shape": shape, "seed": seed}, indent=2) + "\n")
    return out


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
