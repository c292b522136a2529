"""`finealign explain ckpt=PATH image=I [caption=J] [aligners=a,b,...] [--out FILE.png]
[--keep-special-tokens] [--cfg job|hydra|all [--resolve]] [overrides]`: a picture of which word goes to which region under several
aligners, for one test pair, written into the run's folder (`<run>/explain/imageI_captionJ.png`)
unless `--out` (or `out=`) names the file.

    finealign explain ckpt=runs/.../model.pt image=3
    finealign explain ckpt=runs/.../model.pt image=3 caption=17 aligners=tokenflow,hard,mean_max,cross_attention
    finealign explain --cfg job ckpt=runs/.../model.pt eval.split=val   # the config it would use; draws nothing
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from finealign.cli.hydra_flags import add_cfg_flags, dirs_node, print_cfg
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
    parser.add_argument("--out", metavar="FILE.png", default=None,
                        help="where to draw (default: <run>/explain/image<I>_caption<J>.png beside the checkpoint)")  # fmt: skip
    parser.add_argument("--keep-special-tokens", action="store_true",
                        help="also draw [CLS]/[SEP] (scored by the aligners either way; not drawn by default)")  # fmt: skip
    add_cfg_flags(parser, "the checkpoint's config with the overrides applied")


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
    from finealign.engine.explain import default_picture, explain_pair, plot_explanation

    own: dict[str, str] = {}
    rest: list[str] = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        if key.lstrip("+~").startswith("hydra."):
            raise ConfigError(f"{key}: explain writes one picture (out=FILE.png); Hydra's settings do nothing here")
        (own.__setitem__(key, value) if key in OWN else rest.append(item))
    show = getattr(args, "cfg", None)
    if show and "ckpt" in own:  # what would be explained, and where its picture goes; nothing is loaded or drawn
        from finealign.engine.experiment import checkpoint_config
        from finealign.engine.explain import run_folder

        picture = getattr(args, "out", None) or own.get("out")
        folder = Path(picture).parent if picture else run_folder(own["ckpt"]) / "explain"
        cfg = checkpoint_config(own["ckpt"], rest)[2]
        print_cfg(show, cfg, dirs_node(str(folder)), resolve=bool(getattr(args, "resolve", False)))
        return 0
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
    flag = getattr(args, "out", None)
    if flag is not None and "out" in own and Path(flag) != Path(own["out"]):
        raise ConfigError(f"--out {flag} and out={own['out']} name two pictures: give one")
    chosen = flag or own.get("out")
    if chosen is not None:
        check_picture_path(Path(chosen))  # before the model is loaded and every aligner has run
    keep = bool(getattr(args, "keep_special_tokens", False))
    explained = explain_pair(own["ckpt"], image, caption, aligners, rest, keep_special=keep)
    out = Path(chosen) if chosen is not None else default_picture(own["ckpt"], image, explained.caption)
    try:
        check_picture_path(out)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; name another file with --out FILE.png") from None
    path = plot_explanation(explained, out)
    hidden = f" ({', '.join(dict.fromkeys(explained.hidden))} scored, not drawn: --keep-special-tokens)"
    print(f"{explained.caption_text or ''}\nwords: {' '.join(explained.words)}{hidden if explained.hidden else ''}")
    for name, alignment in explained.alignments.items():
        print(f"{name:16s} score {alignment.score:.4f}  word → region {alignment.word_to_region.tolist()}")
    print(f"picture: {path}")
    return 0
