"""Karpathy-split image–caption datasets (Flickr8K, Flickr30K, MS-COCO).

Layout: `<root>/<json_name>` (`dataset_*.json`: images[] with filename, optional filepath, split,
sentences[].raw) and the images under `<root>/<image_dir>/[<filepath>/]<filename>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from finealign.checks import check_positive_int
from finealign.data.base import RetrievalSplit
from finealign.data.json_files import file_fingerprint, read_json
from finealign.data.paths import ENV_DATA_ROOT, candidate_roots, default_root
from finealign.data.sanity import has_word
from finealign.errors import ConfigError, DataError
from finealign.formats.images import open_rgb_image
from finealign.registry import DATASETS
from finealign.safe_paths import escapes

SPLITS = ("train", "val", "test", "restval")


def annotation_problem(image: Any) -> str:
    """What is wrong with one Karpathy image entry ('' when nothing): a dataset is checked whole
    before training, so a bad entry cannot end a run after hours of training."""
    if not isinstance(image, dict):
        return f"is not an object: {image!r:.80}"
    split = image.get("split")
    if split not in SPLITS:
        return f"has split {split!r} (needs one of {', '.join(SPLITS)}); it would be silently dropped"
    if escapes(image.get("filename")):
        return f"has filename {image.get('filename')!r}: it must be a relative path inside the image folder"
    if image.get("filepath") and escapes(image["filepath"]):
        return f"has filepath {image['filepath']!r}: it must be a relative path inside the image folder"
    sentences = image.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        return "has no sentences (every image needs at least one caption)"
    for s in sentences:
        if not isinstance(s, dict) or not has_word(s.get("raw")):
            return f"has an empty or malformed caption {s!r:.80} (each needs a 'raw' string with a word in it)"
    return ""


@dataclass
class KarpathyConfig:
    root: str | None = None  # folder holding the JSON and the image folder
    json_name: str = "dataset_flickr8k.json"
    image_dir: str = "images"
    restval_as_train: bool = True  # COCO's "restval" images join "train" (the usual 113K setting)
    max_items: int | None = None  # keep the first N images of a split (quick runs, tests)

    def __post_init__(self) -> None:
        check_positive_int("max_items", self.max_items, optional=True)
        for key in ("json_name", "image_dir"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"{key} must be a non-empty string, got {getattr(self, key)!r}")


@DATASETS.register("karpathy")
class KarpathyDataset:
    """A Karpathy-split JSON plus its image folder; captions grouped per image."""

    Config = KarpathyConfig
    #: the folder name used to find a default root and in "how to get it" messages.
    dataset_name: str | None = None

    def __init__(self, config: KarpathyConfig | None = None):
        self.config = config or self.Config()
        self.root = self._resolve_root()
        self.json_path = self.root / self.config.json_name
        self.image_root = self.root / self.config.image_dir
        if not self.json_path.is_file():
            raise DataError(f"Karpathy annotation file not found: {self.json_path}{self._how_to_get()}")
        if not self.image_root.is_dir():
            raise DataError(f"image folder not found: {self.image_root}{self._how_to_get()}")

    def _resolve_root(self) -> Path:
        root: Path | None
        if self.config.root is not None:
            root = Path(self.config.root).expanduser()
            if not root.is_dir():
                raise DataError(f"dataset root not found: {root}{self._how_to_get()}")
            return root
        if self.dataset_name is None:
            raise ConfigError("the karpathy dataset needs root=<folder with the dataset_*.json>")
        root = default_root(self.dataset_name)
        if root is None:
            tried = ", ".join(str(p) for p in candidate_roots(self.dataset_name))
            raise DataError(f"{self.dataset_name} not found (looked in {tried}).{self._how_to_get()}")
        return root

    def _how_to_get(self) -> str:
        name = self.dataset_name or "flickr8k|flickr30k|coco"
        return (
            f"\nTo obtain it run `finealign download {name} --root DIR` (it fetches what is public and "
            f"says where to put the rest), then pass root=DIR or set {ENV_DATA_ROOT} to DIR's parent."
        )

    @cached_property
    def annotations(self) -> list[dict[str, Any]]:
        data = read_json(self.json_path, "Karpathy annotation file")
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{self.json_path} has no 'images' list (is it a Karpathy dataset_*.json?)")
        for index, image in enumerate(images):
            problem = annotation_problem(image)
            if problem:  # found before any training starts, never after it (a trained run must not be lost)
                raise DataError(f"{self.json_path}: image entry {index} {problem}")
        return images

    def split_names(self) -> list[str]:
        present = {img.get("split") for img in self.annotations}
        if self.config.restval_as_train and "restval" in present:
            present.add("train")
        return [s for s in SPLITS if s in present]

    def _in_split(self, image_split: str, name: str) -> bool:
        if name == "train" and self.config.restval_as_train:
            return image_split in ("train", "restval")
        return image_split == name

    def image_path(self, image: dict[str, Any]) -> Path:
        folder = self.image_root / image["filepath"] if image.get("filepath") else self.image_root
        return folder / image["filename"]  # confined to image_root: annotation_problem refuses ../ and /abs

    def split(self, name: str) -> RetrievalSplit:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r} for {self.json_path.name}; choose from {SPLITS[:3]}")
        chosen = [img for img in self.annotations if self._in_split(img.get("split", ""), name)]
        if not chosen:
            raise DataError(f"{self.json_path} has no images in split {name!r} (splits: {self.split_names()})")
        if self.config.max_items is not None:
            chosen = chosen[: self.config.max_items]
        items, captions, owners = [], [], []
        for index, image in enumerate(chosen):
            try:
                sentences = [s["raw"] for s in image["sentences"]]
                items.append(str(self.image_path(image)))
            except (KeyError, TypeError) as exc:
                raise DataError(f"{self.json_path}: image entry {index} of split {name!r} lacks {exc}") from exc
            captions.extend(sentences)
            owners.extend([index] * len(sentences))
        return RetrievalSplit(
            name=name,
            items=items,
            captions=captions,
            caption_item=torch.tensor(owners, dtype=torch.long),
            load_item=open_rgb_image,
            meta={"dataset": self.dataset_name or "karpathy", "json": str(self.json_path)},
        )

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data: the annotation file (path, size, mtime) and the image folder."""
        return {"json": file_fingerprint(self.json_path), "image_dir": str(self.image_root.resolve())}


@dataclass
class Flickr8kConfig(KarpathyConfig):
    json_name: str = "dataset_flickr8k.json"


@dataclass
class Flickr30kConfig(KarpathyConfig):
    json_name: str = "dataset_flickr30k.json"


@dataclass
class CocoConfig(KarpathyConfig):
    json_name: str = "dataset_coco.json"  # images under images/train2014, images/val2014


@DATASETS.register("flickr8k")
class Flickr8k(KarpathyDataset):
    """Flickr8K, Karpathy splits (6,000 / 1,000 / 1,000 images, 5 captions each)."""

    Config = Flickr8kConfig
    dataset_name = "flickr8k"


@DATASETS.register("flickr30k")
class Flickr30k(KarpathyDataset):
    """Flickr30K, Karpathy splits (29,000 / 1,014 / 1,000 images, 5 captions each)."""

    Config = Flickr30kConfig
    dataset_name = "flickr30k"


@DATASETS.register("coco")
class Coco(KarpathyDataset):
    """MS-COCO, Karpathy splits (113,287 train with restval / 5,000 / 5,000 images)."""

    Config = CocoConfig
    dataset_name = "coco"
