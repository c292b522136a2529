"""A tiny Karpathy-style dataset written to a temporary folder (PIL images + dataset_*.json)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

# (split, number of captions): uneven caption counts exercise the grouping.
LAYOUT = [("train", 5), ("train", 5), ("restval", 2), ("val", 5), ("test", 5), ("test", 3), ("test", 5)]
WORDS = ["dog", "cat", "beach", "red", "ball", "child", "runs", "sits", "grass", "water"]


def caption(i: int, j: int) -> str:
    """Caption j of image i; captions have different lengths (3 + j words) so padding is exercised."""
    return " ".join(WORDS[(i + 3 * k + j) % len(WORDS)] for k in range(3 + j)) + " ."


def make_fake_karpathy(root: Path, json_name: str = "dataset_flickr8k.json", size: int = 40) -> Path:
    """Write images/<k>.jpg and the JSON; returns the root."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, (split, n_captions) in enumerate(LAYOUT):
        name = f"img{i}.jpg"
        Image.new("RGB", (size + 8 * i, size), (30 * i % 256, 90, 200 - 20 * i)).save(root / "images" / name)
        sentences = [{"raw": caption(i, j), "tokens": caption(i, j).split()} for j in range(n_captions)]
        images.append({"filename": name, "split": split, "imgid": i, "sentences": sentences})
    (root / json_name).write_text(json.dumps({"dataset": "fake", "images": images}))
    return root
