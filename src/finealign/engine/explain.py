"""Which word goes to which region: the token-level alignments of one (image, caption) pair under
several aligners, from a trained checkpoint (`finealign explain`), and a picture of them.

Every aligner's `explain()` gives weights (real words × real regions): TokenFlow's transport flow,
CHAN's hard max (one-hot), SCAN's attention, mean-max's argmax. The picture puts one row per
aligner (its name and score on the left) and one panel per word (the words above the first row):
the word's weights over the image's grid (7×7 for MobileNetV2), normalised to the word's largest
weight, laid over the image when the data has image files — raw Karpathy data and feature caches
of it alike — and the regions form a square grid, else a bar per region; one colour bar for all.

Words are the text encoder's pieces where its tokenizer is at hand (the model's own, or the one a
feature cache was built with). Special tokens ([CLS], [SEP]) are not drawn unless asked for
(`keep_special`): they carry no word, though the aligner scored them (the printed scores are the
model's, with them). The picture goes into the run's folder (`<run>/explain/`) unless told where.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finealign.aligners.base import TokenAlignment
from finealign.errors import ConfigError


@dataclass
class PairExplanation:
    image: int
    caption: int
    caption_text: str | None
    image_path: str | None
    words: list[str]
    alignments: dict[str, TokenAlignment] = field(default_factory=dict)
    hidden: list[str] = field(default_factory=list)  # special tokens scored but not shown ([CLS], [SEP])


def run_folder(ckpt: str | Path) -> Path:
    """The run a checkpoint belongs to: the folder of model.pt, or the run above checkpoints/last.pt."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def default_picture(ckpt: str | Path, image: int, caption: int) -> Path:
    """Where `finealign explain` draws when no path is given: beside the run's other outputs."""
    return run_folder(ckpt) / "explain" / f"image{image}_caption{caption}.png"


def _tokenizer(model: Any, data_options: dict[str, Any]) -> tuple[Any, int] | None:
    """(tokenizer, max_length) the caption's tokens came from: the model's text encoder's own, or
    for a feature cache the Hugging Face encoder it was built with; None when neither is at hand."""
    own = getattr(model.text, "tokenizer", None)
    if own is not None:
        return own, int(getattr(getattr(model.text, "config", None), "max_length", 512) or 512)
    if not data_options.get("text"):
        return None
    try:
        from finealign.data.words import text_encoder_config
        from finealign.encoders.hf_text import load_tokenizer

        cls, config = text_encoder_config(str(data_options["text"]), dict(data_options.get("text_options") or {}))
        return load_tokenizer(cls.source_of(config)), int(config.max_length)
    except Exception:  # not a Hugging Face encoder, or its optional package is missing: w0, w1, ...
        return None


def word_labels(
    model: Any, data_options: dict[str, Any], caption: str | None, positions: Sequence[int]
) -> tuple[list[str], list[bool]]:
    """(label, is special) of the caption's tokens at `positions` (the real tokens the aligners
    saw): the tokenizer's pieces when it is at hand and covers them, else w0, w1, ... (none special)."""
    fallback = [f"w{k}" for k in range(len(positions))], [False] * len(positions)
    found = _tokenizer(model, data_options) if caption is not None else None
    if found is None or not positions:
        return fallback
    tokenizer, max_length = found
    encoded = tokenizer(caption, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    if max(positions) >= len(pieces):
        return fallback  # another tokenizer made these tokens
    special = encoded["special_tokens_mask"]
    return [str(pieces[p]) for p in positions], [bool(special[p]) for p in positions]


def explain_pair(
    ckpt: str | Path,
    image: int,
    caption: int | None = None,
    aligners: Sequence[str] = ("mean_max", "hard", "tokenflow"),
    overrides: Iterable[str] = (),
    *,
    keep_special: bool = False,
) -> PairExplanation:
    """Alignments of test image `image` with caption `caption` (default: its first) under each aligner.
    The checkpoint's own aligner keeps its trained parameters; other aligners use their defaults on
    the same trained token features. Special tokens are left out of the words and weights unless
    `keep_special` (the scores are the aligners' own either way)."""
    from finealign.engine.evaluate import encode_all
    from finealign.engine.experiment import load_trained_model
    from finealign.profiling.measure import build_aligner
    from finealign.registry import create_dataset

    model, spec = load_trained_model(ckpt, overrides)
    model.eval()
    dname, doptions = spec.data
    split = create_dataset(dname, **doptions).split(spec.eval.split)
    if not 0 <= image < split.num_items:
        raise ConfigError(f"image={image} is outside the {spec.eval.split} split's {split.num_items} images")
    owned = (split.caption_item == image).nonzero().flatten().tolist()
    caption = owned[0] if caption is None else caption
    if not 0 <= caption < len(split.captions):
        raise ConfigError(f"caption={caption} is outside the split's {len(split.captions)} captions")
    device = next(model.parameters()).device
    visual = encode_all(model.vision, [split.raw_item(image)], batch_size=1, device=device)
    text = encode_all(model.text, [split.captions[caption]], batch_size=1, device=device)
    caption_text, image_path = _raw_texts(split, dname, doptions, image, caption)
    out = PairExplanation(image=image, caption=caption, caption_text=caption_text, image_path=image_path, words=[])
    for name in aligners:
        aligner = model.aligner if name == spec.aligner[0] else build_aligner(name, spec.embed_dim)
        try:
            with torch.no_grad():
                out.alignments[name] = aligner.to(device).eval().explain(visual, text)
        except NotImplementedError as exc:
            raise ConfigError(f"aligner {name!r} has no token-level alignment to draw: {exc}") from exc
    positions = text.mask[0].nonzero().flatten().tolist()
    words, special = word_labels(model, doptions, caption_text, positions)
    keep = [k for k, s in enumerate(special) if keep_special or not s] or list(range(len(words)))
    out.words = [words[k] for k in keep]
    out.hidden = [w for k, w in enumerate(words) if k not in set(keep)]
    if out.hidden:
        index = torch.tensor(keep)
        out.alignments = {
            name: TokenAlignment(
                a.weights[index.to(a.weights.device)], a.word_to_region[index.to(a.weights.device)], a.score
            )  # fmt: skip
            for name, a in out.alignments.items()
        }
    return out


def _raw_texts(
    split: Any, dname: str, doptions: dict[str, Any], image: int, caption: int
) -> tuple[str | None, str | None]:
    """(caption text, image file) where the data has them: raw splits directly, cached features
    through the cache's item list and the underlying dataset's captions."""
    caption_text = split.captions[caption] if isinstance(split.captions[caption], str) else None
    item = split.items[image] if isinstance(split.items[image], str) else None
    if caption_text is None and dname == "cached":
        from finealign.registry import create_dataset

        raw = create_dataset(doptions["dataset"], **dict(doptions.get("dataset_options") or {})).split(split.name)
        caption_text = raw.captions[caption]
        item = raw.items[image]
    return caption_text, item if item and Path(item).is_file() else None


def plot_explanation(explained: PairExplanation, path: str | Path, max_words: int = 12) -> Path:
    """One row per aligner (name and score on its left), one panel per word (up to `max_words`,
    titled above the first row), the image first when known; one colour bar for the normalised
    weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = list(explained.alignments)
    words = explained.words[:max_words]
    picture = None
    if explained.image_path:
        from PIL import Image

        picture = np.asarray(Image.open(explained.image_path).convert("RGB").resize((224, 224)))
    cols = len(words) + (1 if picture is not None else 0)
    cmap, norm = plt.get_cmap("magma"), Normalize(0.0, 1.0)
    # room on the left for the rows' names, on the right for the colour bar, above for the title
    fig, axes = plt.subplots(len(names), cols, figsize=(1.9 * cols + 2.2, 2.0 * len(names) + 0.8), dpi=100,
                             squeeze=False, layout="constrained")  # fmt: skip
    for row, name in enumerate(names):
        alignment = explained.alignments[name]
        weights = alignment.weights.float().cpu().numpy()
        regions = weights.shape[1]
        side = int(round(math.sqrt(regions)))
        grid = side * side == regions
        offset = 0
        if picture is not None:
            axes[row, 0].imshow(picture)
            offset = 1
        for k, word in enumerate(words):
            ax = axes[row, k + offset]
            w = weights[k] / max(float(weights[k].max()), 1e-12)
            if grid and picture is not None:
                ax.imshow(picture)
                ax.imshow(w.reshape(side, side), cmap=cmap, norm=norm, alpha=0.55, extent=(0, 224, 224, 0))
            elif grid:
                ax.imshow(w.reshape(side, side), cmap=cmap, norm=norm)
            else:
                ax.bar(range(regions), w, color=cmap(norm(w)), edgecolor="0.3", linewidth=0.3)
                ax.set_ylim(0, 1.05)
                ax.set_facecolor("0.92")  # the palest bars (weight 1) stand out from the panel
            if row == 0:
                ax.set_title(word, fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{name}\nscore {alignment.score:.3f}", rotation=0, ha="right", va="center",
                                fontsize=9, labelpad=8)  # fmt: skip
    if picture is not None:
        axes[0, 0].set_title("image", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes, fraction=0.02, pad=0.01, aspect=30)
    bar.set_label("weight ÷ the word's largest", fontsize=8)
    caption = explained.caption_text or f"caption {explained.caption}"
    notes = []
    if len(explained.words) > len(words):
        notes.append(f"first {len(words)} of {len(explained.words)} words")
    if explained.hidden:
        notes.append(f"{', '.join(dict.fromkeys(explained.hidden))} scored, not shown")
    fig.suptitle(f"image {explained.image}: {caption}" + (f"   ({'; '.join(notes)})" if notes else ""), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
