"""MSR-VTT text–video retrieval.

Layout under `root` (the CLIP4Clip release `msrvtt_data.zip` plus frames or features you extract):
  MSRVTT_data.json                   {"videos": [{"video_id", "split", ...}], "sentences": [{"video_id", "caption"}]}
  MSRVTT_train.9k.csv                optional list of train video ids (the 9K split)
  MSRVTT_JSFUSION_test.csv           optional 1K-A test list; its `sentence` column gives one caption per video
  frames/<video_id>/*.jpg            decoded frames (source="frames"), or
  features/<video_id>.npy            (T, d) per-frame features (source="features")
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finealign.checks import check_choice, check_positive_int
from finealign.data.base import RetrievalSplit
from finealign.data.json_files import file_fingerprint, read_json
from finealign.data.paths import candidate_roots, default_root
from finealign.errors import ConfigError, DataError
from finealign.registry import DATASETS
from finealign.safe_paths import escapes

_SOURCES = ("frames", "features")
_FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
# The JSON's own split names, for splits given without a csv list.
_JSON_SPLIT = {"train": "train", "val": "validate", "test": "test"}


@dataclass
class MSRVTTConfig:
    root: str | None = None
    json_name: str = "MSRVTT_data.json"
    source: str = "frames"  # "frames": frames/<video_id>/*.jpg; "features": features/<video_id>.npy
    frames_dir: str = "frames"
    features_dir: str = "features"
    # Video-id lists per split (csv with a `video_id` column, or one id per line). Empty = use the
    # JSON's split field. The usual protocol: train 9K + test 1K-A.
    train_list: str | None = "MSRVTT_train.9k.csv"
    test_list: str | None = "MSRVTT_JSFUSION_test.csv"
    max_items: int | None = None

    def __post_init__(self) -> None:
        check_choice("source", self.source, _SOURCES)
        check_positive_int("max_items", self.max_items, optional=True)


def read_video_list(path: Path) -> tuple[list[str], dict[str, str]]:
    """Video ids from a split csv, plus the csv's own caption per video when it has a `sentence` column."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"split list {path} is empty")
    header = [h.strip() for h in rows[0]]
    if "video_id" not in header:  # a bare list: one id per line
        return [r[0].strip() for r in rows if r and r[0].strip()], {}
    vid_col = header.index("video_id")
    sent_col = header.index("sentence") if "sentence" in header else None
    ids, sentences = [], {}
    for r in rows[1:]:
        if len(r) <= vid_col:
            continue
        ids.append(r[vid_col].strip())
        if sent_col is not None and len(r) > sent_col:
            sentences[ids[-1]] = r[sent_col].strip()
    return ids, sentences


@DATASETS.register("msrvtt")
class MSRVTT:
    """MSR-VTT: 10K web videos, 20 captions each; frames or per-frame features on disk."""

    Config = MSRVTTConfig
    dataset_name = "msrvtt"

    def __init__(self, config: MSRVTTConfig | None = None):
        self.config = config or MSRVTTConfig()
        if self.config.root is not None:
            self.root = Path(self.config.root).expanduser()
        else:
            found = default_root(self.dataset_name)
            if found is None:
                tried = ", ".join(str(p) for p in candidate_roots(self.dataset_name))
                raise DataError(f"msrvtt not found (looked in {tried}).{self._how_to_get()}")
            self.root = found
        self.json_path = self.root / self.config.json_name
        if not self.json_path.is_file():
            raise DataError(f"MSR-VTT annotation file not found: {self.json_path}{self._how_to_get()}")
        folder = self.config.frames_dir if self.config.source == "frames" else self.config.features_dir
        self.media_root = self.root / folder
        if not self.media_root.is_dir():
            raise DataError(f"MSR-VTT {self.config.source} folder not found: {self.media_root}{self._how_to_get()}")

    @staticmethod
    def _how_to_get() -> str:
        return "\nRun `finealign download msrvtt --root DIR` for the annotations and where to put frames."

    @cached_property
    def annotations(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """(video_id → JSON split, video_id → captions in file order)."""
        data = read_json(self.json_path, "MSR-VTT annotation file")
        try:
            splits = {v["video_id"]: v.get("split", "") for v in data["videos"]}
            captions: dict[str, list[str]] = defaultdict(list)
            for s in data["sentences"]:
                captions[s["video_id"]].append(s["caption"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{self.json_path} is not in the MSRVTT_data.json layout (missing {exc})") from exc
        return splits, dict(captions)

    def _split_list(self, name: str) -> str | None:
        return {"train": self.config.train_list, "test": self.config.test_list}.get(name)

    def _videos_of(self, name: str) -> tuple[list[str], dict[str, str]]:
        listed = self._split_list(name)
        if listed:
            path = self.root / listed
            if path.is_file():
                return read_video_list(path)
        splits, _ = self.annotations
        return [v for v, s in splits.items() if s == _JSON_SPLIT[name]], {}

    def split(self, name: str) -> RetrievalSplit:
        if name not in _JSON_SPLIT:
            raise ConfigError(f"unknown MSR-VTT split {name!r}; choose from {tuple(_JSON_SPLIT)}")
        videos, csv_sentences = self._videos_of(name)
        if self.config.max_items is not None:
            videos = videos[: self.config.max_items]
        if not videos:
            raise DataError(f"no videos in MSR-VTT split {name!r} ({self.json_path})")
        outside = next((v for v in videos if escapes(v) or Path(v).name != v), None)
        if outside is not None:  # an id names a file or folder under media_root: never a path out of it
            raise DataError(f"video id {outside!r} of split {name!r} is not a plain name inside {self.media_root}")
        _, all_captions = self.annotations
        captions, owners = [], []
        for index, vid in enumerate(videos):
            # 1K-A pairs each test video with the one caption its csv names.
            own = [csv_sentences[vid]] if vid in csv_sentences else all_captions.get(vid, [])
            if not own:
                raise DataError(f"video {vid!r} of split {name!r} has no caption in {self.json_path}")
            captions.extend(own)
            owners.extend([index] * len(own))
        return RetrievalSplit(
            name=name,
            items=videos,
            captions=captions,
            caption_item=torch.tensor(owners, dtype=torch.long),
            load_item=self.load_frames if self.config.source == "frames" else self.load_features,
            meta={"dataset": "msrvtt", "json": str(self.json_path), "source": self.config.source},
        )

    def load_frames(self, video_id: str) -> list[Path]:
        """The video's frame files in order (decoded later, only those the encoder samples)."""
        folder = self.media_root / video_id
        frames = sorted(p for p in folder.glob("*") if p.suffix.lower() in _FRAME_SUFFIXES) if folder.is_dir() else []
        if not frames:
            raise DataError(f"no frames for video {video_id!r}: expected images in {folder}")
        return frames

    def load_features(self, video_id: str) -> np.ndarray:
        path = self.media_root / f"{video_id}.npy"
        if not path.is_file():
            raise DataError(f"frame features not found: {path}")
        try:
            feats = np.load(path)
        except (ValueError, OSError) as exc:
            raise DataError(f"cannot read frame features {path}: {exc}") from exc
        if feats.ndim != 2:
            raise DataError(f"frame features {path} must be (frames, dim), got shape {feats.shape}")
        return feats

    def fingerprint(self) -> dict[str, Any]:
        lists = {}
        for name in ("train", "test"):
            listed = self._split_list(name)
            if listed and (self.root / listed).is_file():
                lists[name] = file_fingerprint(self.root / listed)
        return {"json": file_fingerprint(self.json_path), "lists": lists, "media": str(self.media_root.resolve())}
