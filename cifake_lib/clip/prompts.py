"""Prompt sets for zero-shot CLIP (and the fine-tuning stage's class prompts), as plain data.

A prompt set names text templates for each label, REAL (0) and FAKE (1), in the style of
open_clip's `zero_shot_metadata.py`. A template may contain `{class}`, filled with a CIFAR-10
class name ("a photo of a {class}."); a set with such templates is *class-aware*.

How a class-aware set scores an image (see `zeroshot.ZeroShotHead`):

- its CIFAR class known (CIFAKE's file names give it): the text classifier of that class,
  i.e. `texts(label, cifar_class)` for REAL and FAKE;
- its class unknown (-1, or any user image): marginalised over the ten classes. The joint
  20-way zero-shot classifier over (label, class) pairs is built, and p(label | image) is the
  sum over classes of the joint softmax, i.e. the label's logit is the log-mean-exp over
  classes of the class-conditional logits. This is a true marginal with a uniform class prior.
  (The cheaper alternative, averaging the class-conditional text embeddings into one per label,
  is `marginal="mean"`; it equals ensembling `texts(label)` with no class.)

User sets come from a JSON or TOML file `{"name": ..., "REAL": [...], "FAKE": [...]}` ("name"
optional: the file's stem), read by `load_prompt_file` or by `get_prompt_set(path)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifake_lib import CIFAR_CLASSES, LABEL_NAMES

CLASS_FIELD = "{class}"
MARGINALS = ("logsumexp", "mean")


@dataclass(frozen=True)
class PromptSet:
    """Templates for REAL (`real`) and FAKE (`fake`); `{class}` marks a CIFAR class slot."""

    name: str
    real: tuple[str, ...]
    fake: tuple[str, ...]
    description: str = ""
    class_names: tuple[str, ...] = field(default=CIFAR_CLASSES)

    def __post_init__(self) -> None:
        object.__setattr__(self, "real", _templates(self.real, self.name, "REAL"))
        object.__setattr__(self, "fake", _templates(self.fake, self.name, "FAKE"))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.class_aware and len(self.class_names) == 0:
            raise ValueError(f"prompt set {self.name!r}: class-aware templates need class_names")

    @property
    def class_aware(self) -> bool:
        """True when some template has a `{class}` slot."""
        return any(CLASS_FIELD in t for t in self.real + self.fake)

    def templates(self, label: int) -> tuple[str, ...]:
        """The raw templates of `label` (0 = REAL, 1 = FAKE)."""
        if label not in (0, 1):
            raise ValueError(f"label must be 0 (REAL) or 1 (FAKE), got {label!r}")
        return self.fake if label == 1 else self.real

    def texts(self, label: int, cifar_class: int | None = None) -> list[str]:
        """The prompts of `label`, ready to tokenise.

        `cifar_class` (0..9) fills `{class}` with that class; None or -1 fills it with every
        class in turn (templates x classes, class-major), the union whose averaged embedding is
        the `marginal="mean"` classifier. Templates without a slot are returned as they are.
        """
        templates = self.templates(label)
        if not self.class_aware:
            return list(templates)
        if cifar_class is None or cifar_class < 0:
            out: list[str] = []
            for c in range(len(self.class_names)):
                out += self.texts(label, c)
            return list(dict.fromkeys(out))  # slot-less templates would repeat once per class
        if cifar_class >= len(self.class_names):
            raise ValueError(f"cifar_class must be -1..{len(self.class_names) - 1}, got {cifar_class}")
        name = self.class_names[cifar_class]
        return [t.replace(CLASS_FIELD, name) for t in templates]

    def class_texts(self, label: int) -> list[list[str]]:
        """One prompt list per CIFAR class (class-aware sets only)."""
        if not self.class_aware:
            raise ValueError(f"prompt set {self.name!r} has no {CLASS_FIELD} templates")
        return [self.texts(label, c) for c in range(len(self.class_names))]

    def to_dict(self) -> dict[str, Any]:
        """The detector.json form: {"name", "REAL", "FAKE"} (+ "class_names" when class-aware)."""
        d: dict[str, Any] = {"name": self.name, "REAL": list(self.real), "FAKE": list(self.fake)}
        if self.description:
            d["description"] = self.description
        if self.class_aware:
            d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, name: str | None = None, source: str = "prompts") -> PromptSet:
        """Build from {"REAL": [...], "FAKE": [...]} (keys case-insensitive; "name" optional)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected an object with REAL and FAKE lists, got {type(d).__name__}")
        keys = {str(k).upper(): k for k in d}
        missing = [k for k in LABEL_NAMES if k not in keys]
        if missing:
            raise ValueError(f"{source}: missing {' and '.join(missing)} (expected {{\"REAL\": [...], \"FAKE\": [...]}})")
        real, fake = d[keys["REAL"]], d[keys["FAKE"]]
        if isinstance(real, str):
            real = [real]
        if isinstance(fake, str):
            fake = [fake]
        class_names = d.get("class_names", CIFAR_CLASSES)
        try:
            return cls(name=str(d.get("name") or name or "custom"), real=tuple(real), fake=tuple(fake),
                       description=str(d.get("description", "")), class_names=tuple(class_names))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def _templates(values: Iterable[str], name: str, label: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    out = tuple(values)
    if not out:
        raise ValueError(f"prompt set {name!r}: no {label} templates")
    for t in out:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"prompt set {name!r}: {label} templates must be non-empty strings, got {t!r}")
        try:  # catch stray braces early ("{clas}") rather than sending them to the tokenizer
            t.replace(CLASS_FIELD, "x").format()
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"prompt set {name!r}: template {t!r} has a placeholder other than "
                             f"{CLASS_FIELD}") from None
    return out


# ---------------------------------------------------------------------------
# Built-in sets. CIFAKE's REAL images are CIFAR-10 photos; its FAKE images are Stable Diffusion
# 1.4 renderings of the same ten classes, both 32x32.
# ---------------------------------------------------------------------------

PROMPT_SETS: dict[str, PromptSet] = {
    s.name: s
    for s in (
        PromptSet(
            "plain",
            real=("a real photo.",),
            fake=("an AI-generated image.",),
            description="one template per label",
        ),
        PromptSet(
            "ensemble",
            real=(
                "a real photo.",
                "a photo taken with a camera.",
                "an authentic photograph.",
                "a genuine photo of a real scene.",
                "a natural photo.",
                "a real picture.",
            ),
            fake=(
                "an AI-generated image.",
                "a synthetic image made by a computer.",
                "an image generated by a diffusion model.",
                "a fake image created by artificial intelligence.",
                "a computer-generated picture.",
                "a generated image.",
            ),
            description="six paraphrases per label, embeddings averaged (open_clip style)",
        ),
        PromptSet(
            "class_aware",
            real=(
                "a photo of a {class}.",
                "a real photo of a {class}.",
                "a photo of a {class} taken with a camera.",
                "an authentic photograph of a {class}.",
            ),
            fake=(
                "an AI-generated image of a {class}.",
                "a synthetic image of a {class}.",
                "an image of a {class} generated by stable diffusion.",
                "a fake picture of a {class} made by a computer.",
            ),
            description="CIFAR class in the prompt: the image's own class when known, else marginalised",
        ),
        PromptSet(
            "descriptive",
            real=(
                "a low resolution real photo.",
                "a small blurry photograph taken with a camera.",
                "a tiny pixelated photo of a real object.",
                "a cropped real photo, low quality.",
            ),
            fake=(
                "a low resolution AI-generated image.",
                "a small synthetic image made by stable diffusion.",
                "a tiny pixelated image generated by a neural network.",
                "a digital art rendering, low resolution.",
            ),
            description="describes CIFAKE's look: tiny, low-resolution images",
        ),
        PromptSet(
            "one_word",
            real=("real", "authentic", "genuine", "natural"),
            fake=("fake", "synthetic", "AI-generated", "artificial"),
            description="single words, ensembled",
        ),
    )
}
DEFAULT_PROMPT_SET = "plain"


def load_prompt_file(path: str | os.PathLike) -> PromptSet:
    """A prompt set from a JSON or TOML file {"name"?, "REAL": [...], "FAKE": [...]}.

    Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = json.loads(text)
    except Exception as e:  # JSONDecodeError / TOMLDecodeError
        raise ValueError(f"{path}: not a valid {path.suffix.lstrip('.').upper() or 'JSON'} prompt file ({e})") from None
    return PromptSet.from_dict(d, name=path.stem, source=str(path))


def get_prompt_set(name_or_path: str | os.PathLike | PromptSet | Mapping[str, Any]) -> PromptSet:
    """A built-in set by name, a JSON/TOML file, a {"REAL", "FAKE"} mapping, or a PromptSet."""
    if isinstance(name_or_path, PromptSet):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return PromptSet.from_dict(name_or_path)
    key = os.fspath(name_or_path)
    if key in PROMPT_SETS:
        return PROMPT_SETS[key]
    if Path(key).suffix.lower() in (".json", ".toml") or Path(key).is_file():
        return load_prompt_file(key)
    raise ValueError(f"unknown prompt set {key!r}: use one of {', '.join(PROMPT_SETS)}, 'all', "
                     "or a .json/.toml file with REAL and FAKE lists")


def resolve_prompt_sets(spec: str | Iterable[str | PromptSet] | None = "all") -> list[PromptSet]:
    """`"all"` (every built-in set), `"plain,ensemble"`, a file path, or a list of those.

    Names must be unique (they name the run folders).
    """
    if spec is None:
        spec = "all"
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError("no prompt sets given")
    out: list[PromptSet] = []
    for item in items:
        if isinstance(item, str) and item == "all":
            out += PROMPT_SETS.values()
        else:
            out.append(get_prompt_set(item))
    seen: dict[str, PromptSet] = {}
    for s in out:
        if s.name in seen and seen[s.name] != s:
            raise ValueError(f"two different prompt sets are named {s.name!r}; rename one")
        seen[s.name] = s
    return list(seen.values())


__all__ = [
    "PromptSet",
    "PROMPT_SETS",
    "DEFAULT_PROMPT_SET",
    "MARGINALS",
    "get_prompt_set",
    "load_prompt_file",
    "resolve_prompt_sets",
]
