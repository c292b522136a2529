"""`finealign explain ckpt=PATH image=I [caption=J] [aligners=a,b,...] [out=FILE.png] [overrides]`:
a picture of which word goes to which region under several aligners, for one test pair.

    finealign explain ckpt=runs/.../model.pt image=3
    finealign explain ckpt=runs/.../model.pt image=3 caption=17 aligners=tokenflow,hard,mean_max,cross_attention
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from finealign.errors import ConfigError

OWN = ("ckpt", "image", "caption", "aligners", "out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="ckpt=PATH image=I (required), caption=J, aligners=a,b, out=FILE.png; "
        "other KEY=VALUE apply to the checkpoint's config (e.g. eval.split=val)",
    )


def check_picture_path(path: Path) -> None:
    """ConfigError unless a picture can be written at `path` (its folder exists or can be made, and takes files)."""
    if path.is_dir():
        raise ConfigError(f"out={path} is a folder: name the picture file, e.g. out={path / 'explain.png'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"out={path}: the picture cannot be written ({folder} is not a writable folder)")


def run(args: argparse.Namespace) -> int:
    from finealign.engine.explain import explain_pair, plot_explanation

    own: dict[str, str] = {}
    rest: list[str] = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        if key.lstrip("+~").startswith("hydra."):
            raise ConfigError(f"{key}: explain writes one picture (out=FILE.png); Hydra's settings do nothing here")
        (own.__setitem__(key, value) if key in OWN else rest.append(item))
    if "ckpt" not in own or "image" not in own:
        raise ConfigError("finealign explain needs ckpt=PATH and image=INDEX (a test image)")
    try:
        image = int(own["image"])
        caption = int(own["caption"]) if "caption" in own else None
    except ValueError as exc:
        raise ConfigError(f"image and caption must be integer indices: {exc}") from exc
    aligners = [a.strip() for a in own.get("aligners", "mean_max,hard,tokenflow").split(",") if a.strip()]
    if not aligners:
        raise ConfigError("aligners= names no aligner: give one or more, e.g. aligners=mean_max,hard")
    if "out" in own:
        check_picture_path(Path(own["out"]))  # before the model is loaded and every aligner has run
    explained = explain_pair(own["ckpt"], image, caption, aligners, rest)
    out = Path(own.get("out", f"explain_image{image}_caption{explained.caption}.png"))
    check_picture_path(out)
    path = plot_explanation(explained, out)
    print(f"{explained.caption_text or ''}\nwords: {' '.join(explained.words)}")
    for name, alignment in explained.alignments.items():
        print(f"{name:16s} score {alignment.score:.4f}  word → region {alignment.word_to_region.tolist()}")
    print(f"picture: {path}")
    return 0
