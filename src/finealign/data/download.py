"""Fetch the public files of each dataset, and say exactly where to put the rest.

Annotation files have public URLs (Karpathy's caption_datasets.zip, the CLIP4Clip MSR-VTT release);
COCO images do too. Flickr8K/30K images are licensed through a request form and MSR-VTT frames must
be extracted from the videos, so for those the plan prints the target folder and how to fill it.
"""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from finealign.errors import ConfigError, DataError

KARPATHY_ZIP = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
MSRVTT_ANNOTATIONS_ZIP = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
MSRVTT_VIDEOS_ZIP = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
COCO_TRAIN_ZIP = "http://images.cocodataset.org/zips/train2014.zip"
COCO_VAL_ZIP = "http://images.cocodataset.org/zips/val2014.zip"


@dataclass(frozen=True)
class RemoteFile:
    """One public archive and which of its members go where under the dataset root."""

    url: str
    members: tuple[str, ...] = ()  # zip members to keep (basename match); empty = extract everything
    target: str = "."  # folder under the root to extract into
    note: str = ""


@dataclass
class DownloadPlan:
    dataset: str
    root: Path
    remote: list[RemoteFile] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)  # steps a person must do (licensed files)
    layout: list[str] = field(default_factory=list)  # the files the dataset loader expects

    def describe(self) -> str:
        lines = [f"{self.dataset}: files go under {self.root}"]
        if self.remote:
            lines.append("Downloaded automatically:")
            for r in self.remote:
                what = ", ".join(r.members) if r.members else "all files"
                lines.append(f"  {r.url}\n    -> {self.root / r.target} ({what}){'  ' + r.note if r.note else ''}")
        if self.manual:
            lines.append("To do by hand:")
            lines.extend(f"  - {step}" for step in self.manual)
        lines.append("Expected layout:")
        lines.extend(f"  {self.root / entry}" for entry in self.layout)
        return "\n".join(lines)


def _karpathy(name: str, json_name: str, root: Path, manual: list[str], layout: list[str]) -> DownloadPlan:
    return DownloadPlan(
        dataset=name,
        root=root,
        remote=[RemoteFile(KARPATHY_ZIP, members=(json_name,), note="(Karpathy splits)")],
        manual=manual,
        layout=[json_name, *layout],
    )


def _flickr8k(root: Path) -> DownloadPlan:
    return _karpathy(
        "flickr8k",
        "dataset_flickr8k.json",
        root,
        [
            "Request the Flickr8k images (Hodosh et al. 2013; research use) via "
            "https://forms.illinois.edu/sec/1713398, unzip Flickr8k_Dataset.zip and move the 8,091 "
            f"JPEGs (e.g. 1000268201_693b08cb0e.jpg) into {root / 'images'}/",
        ],
        ["images/<filename>.jpg"],
    )


def _flickr30k(root: Path) -> DownloadPlan:
    return _karpathy(
        "flickr30k",
        "dataset_flickr30k.json",
        root,
        [
            "Request the Flickr30k images (Young et al. 2014) at "
            "https://shannon.cs.illinois.edu/DenotationGraph/, unpack flickr30k-images.tar.gz and move "
            f"the 31,783 JPEGs into {root / 'images'}/",
        ],
        ["images/<filename>.jpg"],
    )


def _coco(root: Path) -> DownloadPlan:
    plan = _karpathy("coco", "dataset_coco.json", root, [], ["images/train2014/*.jpg", "images/val2014/*.jpg"])
    plan.remote += [
        RemoteFile(COCO_TRAIN_ZIP, target="images", note="(13 GB)"),
        RemoteFile(COCO_VAL_ZIP, target="images", note="(6 GB)"),
    ]
    return plan


def _msrvtt(root: Path) -> DownloadPlan:
    return DownloadPlan(
        dataset="msrvtt",
        root=root,
        remote=[
            RemoteFile(
                MSRVTT_ANNOTATIONS_ZIP,
                members=("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"),
                note="(annotations, 9K train list, 1K-A test list)",
            )
        ],
        manual=[
            f"Download the videos ({MSRVTT_VIDEOS_ZIP}, ~6 GB) and extract frames per video into "
            f"{root / 'frames'}/<video_id>/, e.g. `ffmpeg -i video7010.mp4 -vf fps=1 "
            f"{root / 'frames' / 'video7010' / '%04d.jpg'}`",
            f"or store per-frame features as {root / 'features'}/<video_id>.npy (frames × dim) and use source=features",
        ],
        layout=[
            "MSRVTT_data.json",
            "MSRVTT_train.9k.csv",
            "MSRVTT_JSFUSION_test.csv",
            "frames/<video_id>/*.jpg  (or features/<video_id>.npy)",
        ],
    )


PLANS: dict[str, Callable[[Path], DownloadPlan]] = {
    "flickr8k": _flickr8k,
    "flickr30k": _flickr30k,
    "coco": _coco,
    "msrvtt": _msrvtt,
}


def download_plan(dataset: str, root: str | Path) -> DownloadPlan:
    if dataset not in PLANS:
        raise ConfigError(f"no download recipe for {dataset!r}; known: {', '.join(PLANS)}")
    return PLANS[dataset](Path(root).expanduser())


def _fetch(url: str, dest: Path) -> None:
    from finealign.progress import bar as progress_bar

    with urllib.request.urlopen(url) as response, open(dest, "wb") as out:  # noqa: S310 (fixed https/http URLs)
        total = int(response.headers.get("Content-Length") or 0) or None
        with progress_bar(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _extract(archive: Path, remote: RemoteFile, root: Path) -> list[Path]:
    target = root / remote.target
    target.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                base = Path(info.filename).name
                if info.is_dir() or (remote.members and base not in remote.members):
                    continue
                # Keep the archive's folders only when extracting everything (COCO's train2014/...).
                dest = target / (info.filename if not remote.members else base)
                if not dest.resolve().is_relative_to(target.resolve()):  # zip-slip: ../ or absolute members
                    raise DataError(f"{archive} holds member {info.filename!r}, which points outside {target}; refused")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                written.append(dest)
    except zipfile.BadZipFile as exc:
        raise DataError(f"downloaded archive {archive} is not a valid zip: {exc}") from exc
    missing = set(remote.members) - {p.name for p in written}
    if missing:
        raise DataError(f"{remote.url} did not contain {sorted(missing)}")
    return written


def download(
    dataset: str,
    root: str | Path,
    fetch: Callable[[str, Path], None] = _fetch,
    keep_archives: bool = False,
) -> DownloadPlan:
    """Download and unpack the public files of `dataset` into `root`; returns the plan (print it)."""
    plan = download_plan(dataset, root)
    plan.root.mkdir(parents=True, exist_ok=True)
    for remote in plan.remote:
        archive = plan.root / remote.url.rsplit("/", 1)[-1]
        if not archive.exists():
            partial = archive.with_suffix(archive.suffix + ".part")
            try:
                fetch(remote.url, partial)
            except OSError as exc:
                raise DataError(f"could not download {remote.url} to {archive}: {exc}") from exc
            partial.rename(archive)
        _extract(archive, remote, plan.root)
        if not keep_archives:
            archive.unlink()
    return plan
