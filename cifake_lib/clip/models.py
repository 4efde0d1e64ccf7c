"""Loading a backbone and its processor (a Hub id or a local folder): CLIP, SigLIP, or an image-only
encoder such as DINOv2 (`clip.backbone` tells them apart). Tiny offline models: `clip.tiny`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from cifake_lib.clip.backbone import require_text, vision_config
from cifake_lib.core.backbones import family_of_type
from cifake_lib.core.errors import CifakeError
from cifake_lib.core.network import looks_like_path, offline_unless_hub_reachable
from cifake_lib.core.settings import DEFAULT_MODEL
from cifake_lib.core.weights import DamagedWeights, check_model_folder


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


def load_backbone(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    image_size: int | None = None,
):
    """Load a backbone and its processor from a Hub id or a local folder, in eval mode.

    The class follows the folder's config.json (`clip.backbone`): `CLIPModel` + `CLIPProcessor`,
    `SiglipModel` + `SiglipProcessor`, or an image-only `AutoModel` (DINOv2) + its image
    processor. image_size: feed the model images of this side instead of its own (its processor's
    resize and crop scaled to it; the position embeddings are interpolated on the way in).
    Raises a clear error naming the id when it cannot be fetched (e.g. offline).
    """
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
                model, processor = _load(source, dtype or torch.float32)
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
                raise FileNotFoundError(f"{path}: could not load a model from this folder ({e})") from None
            why = "the Hugging Face Hub cannot be reached and it is not in the local cache" if went_offline \
                else f"{type(e).__name__}"
            raise ModelUnavailable(
                f"could not load model {name!r} from the Hugging Face Hub ({why}). "
                "If this machine is offline, download it elsewhere and pass the local folder "
                "(--model DIR), or write a tiny offline model with `cifake tiny-model DIR`."
            ) from None
    if image_size is not None:
        patch = int(getattr(vision_config(model), "patch_size", 1) or 1)
        if int(image_size) < patch:
            raise ValueError(f"image_size {image_size} is smaller than one {patch}-pixel patch of {name}")
        set_image_size(processor, image_size)
    model.to(device).eval()
    return model, processor


def _load(source: str, dtype: torch.dtype):
    """(model, processor) of the family config.json names."""
    from transformers import AutoConfig, AutoModel, CLIPModel, SiglipModel

    fam = family_of_type(AutoConfig.from_pretrained(source).model_type)
    model_class = {"clip": CLIPModel, "siglip": SiglipModel}.get(fam, AutoModel)
    # SDPA: fused attention kernels, never the (tokens x tokens) scores in memory (speed.check_sdpa).
    model = model_class.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    return model, load_processor(source, fam)


def set_image_size(processor: Any, size: int) -> Any:
    """Make `processor` produce `size` x `size` inputs: the crop becomes `size` and the resize keeps
    its ratio to the crop (CLIP 224/224, DINOv2 256/224); a square resize becomes `size`."""
    if int(size) < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {size}")
    ip = getattr(processor, "image_processor", processor)
    resize = dict(ip.size)
    crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None) else None
    if "shortest_edge" in resize:
        ratio = resize["shortest_edge"] / (crop["height"] if crop else resize["shortest_edge"])
        ip.size = {"shortest_edge": int(round(size * ratio))}
    else:
        ip.size = {"height": int(size), "width": int(size)}
    if crop:
        ip.crop_size = {"height": int(size), "width": int(size)}
    return processor


def load_clip(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None):
    """`load_backbone` for a model that must have a text tower (CLIP or SigLIP)."""
    model, processor = load_backbone(name_or_path, device=device, dtype=dtype)
    require_text(model, f"{os.fspath(name_or_path)}: this step")
    return model, processor


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars from transformers inside the block.

    Loading a model takes a second; a bar per load only fills notebooks with red stderr.
    Our own long work shows its progress through tqdm. Also dropped: the warning that a SigLIP
    config's *default* text config (CLIP's token ids 49406/49407 against a 32,000 vocabulary,
    replaced a moment later by the checkpoint's own) is invalid; every SigLIP load prints it.
    """
    import logging

    from transformers.utils import logging as hf_logging

    def keep(record: logging.LogRecord) -> bool:
        return not ("_token_id must be `None` or an integer within the vocabulary" in str(record.msg)
                    and "got 4940" in str(record.msg))

    logger = logging.getLogger("transformers.configuration_utils")
    logger.addFilter(keep)
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.removeFilter(keep)
        if was_on:
            hf_logging.enable_progress_bar()


# config.json model_type -> the image processor class it is saved with (transformers' name)
_IMAGE_PROCESSORS = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor", "dinov2": "BitImageProcessor"}


def image_processor_class(model_type: str = "clip") -> type:
    """The image processor class of a model type, or its PIL twin when torchvision is absent.

    Without torchvision, transformers 5 falls back to the PIL class by itself but warns on every
    load. We only read the processor's settings (sizes, mean, std: `preprocess.ImagePreprocessor`
    works on tensors), which both classes hold alike, so we ask for the right one directly.
    """
    import importlib.util

    import transformers

    name = _IMAGE_PROCESSORS.get(model_type, "CLIPImageProcessor")
    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, name + "Pil"):
        return getattr(transformers, name + "Pil")
    return getattr(transformers, name)


def load_processor(source: str | os.PathLike, family: str = "clip") -> Any:
    """The processor of a model folder or Hub id: `CLIPProcessor` / `SiglipProcessor` (image
    processor of `image_processor_class`, the folder's tokenizer), or the image processor alone for
    an image-only encoder."""
    from transformers import AutoConfig, AutoTokenizer, CLIPProcessor, SiglipProcessor

    source = os.fspath(source)
    if family == "image":
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type in _IMAGE_PROCESSORS:
            return image_processor_class(model_type).from_pretrained(source)
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(source)
    processor_class = SiglipProcessor if family == "siglip" else CLIPProcessor
    return processor_class(image_processor=image_processor_class(family).from_pretrained(source),
                           tokenizer=AutoTokenizer.from_pretrained(source))
