"""Which word goes to which region: the token-level alignments of one (image, caption) pair under
several aligners, from a trained checkpoint (`finealign explain`), and a picture of them.

Every aligner's `explain()` gives weights (real words × real regions): TokenFlow's transport flow,
CHAN's hard max (one-hot), SCAN's attention, mean-max's argmax. The picture puts one row per
aligner and one panel per word: the word's weights over the image's grid (7×7 for MobileNetV2)
laid over the image when the data has image files and the regions form a square grid, else a bar
per region.
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


def word_labels(model: Any, data_options: dict[str, Any], caption: str | None, count: int) -> list[str]:
    """The caption's word pieces as the text encoder saw them, when its tokenizer is at hand and
    gives exactly `count` tokens; else w0, w1, ..."""
    tokenizer = getattr(model.text, "tokenizer", None)
    if tokenizer is None and data_options.get("text") == "minilm" and caption is not None:
        try:
            from transformers import AutoTokenizer

            from finealign.encoders.minilm import packaged_minilm_path

            tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
        except Exception:  # the offline MiniLM package is an optional extra
            tokenizer = None
    if tokenizer is not None and caption is not None:
        max_length = int((data_options.get("text_options") or {}).get("max_length", 512))
        ids = tokenizer(caption, truncation=True, max_length=max_length)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        if len(pieces) == count:
            return list(pieces)
    return [f"w{k}" for k in range(count)]


def explain_pair(
    ckpt: str | Path,
    image: int,
    caption: int | None = None,
    aligners: Sequence[str] = ("mean_max", "hard", "tokenflow"),
    overrides: Iterable[str] = (),
) -> PairExplanation:
    """Alignments of test image `image` with caption `caption` (default: its first) under each aligner.
    The checkpoint's own aligner keeps its trained parameters; other aligners use their defaults on
    the same trained token features."""
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
    words = int(text.mask[0].sum())
    out.words = word_labels(model, doptions, caption_text, words)
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
    """One row per aligner, one panel per word (up to `max_words`), the image first when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(explained.alignments)
    words = explained.words[:max_words]
    picture = None
    if explained.image_path:
        from PIL import Image

        picture = np.asarray(Image.open(explained.image_path).convert("RGB").resize((224, 224)))
    cols = len(words) + (1 if picture is not None else 0)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.9 * cols, 2.1 * len(names)), dpi=100, squeeze=False)
    for row, name in enumerate(names):
        alignment = explained.alignments[name]
        weights = alignment.weights.float().cpu().numpy()
        regions = weights.shape[1]
        side = int(round(math.sqrt(regions)))
        grid = side * side == regions
        offset = 0
        if picture is not None:
            axes[row, 0].imshow(picture)
            axes[row, 0].set_title(f"{name}\nscore {alignment.score:.3f}", fontsize=8)
            offset = 1
        for k, word in enumerate(words):
            ax = axes[row, k + offset]
            w = weights[k] / max(float(weights[k].max()), 1e-12)
            if grid and picture is not None:
                ax.imshow(picture)
                ax.imshow(w.reshape(side, side), cmap="magma", alpha=0.55, extent=(0, 224, 224, 0), vmin=0, vmax=1)
            elif grid:
                ax.imshow(w.reshape(side, side), cmap="magma", vmin=0, vmax=1)
            else:
                ax.bar(range(regions), w, color="tab:purple")
            ax.set_title(word if picture is not None or k else f"{name}: {word}", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    caption = explained.caption_text or f"caption {explained.caption}"
    fig.suptitle(f"image {explained.image}: {caption}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
