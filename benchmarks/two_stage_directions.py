"""two_stage recall with per-direction shortlists vs the removed union of both directions, on ONE
trained model (so the difference is the evaluation, nothing else).

    python benchmarks/two_stage_directions.py runs/.../model.pt [--out DIR]

Per direction (what finealign evaluates now): image queries rank captions from their own top-K,
caption queries rank images from their own top-K. Union (the old `direction: both`, removed): the
pairs in ANY query's top-K are re-scored and both directions are read off that one matrix, so an
image can rank a caption that only the caption's shortlist held.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from finealign.config import validate
from finealign.engine.checkpoint import load_checkpoint
from finealign.engine.evaluate import encode_all, subset
from finealign.engine.metrics import retrieval_metrics
from finealign.engine.model import build_model
from finealign.registry import create_dataset

COLUMNS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]


def union_scores(aligner, visual, text) -> torch.Tensor:
    """The old union evaluation: one matrix, re-scored on the union of both directions' shortlists."""
    glob = aligner.global_similarity(aligner.prepare(visual), aligner.prepare(text))
    keep = aligner.shortlist(glob, "i2t") | aligner.shortlist(glob, "t2i")
    pairs = keep.nonzero()
    mixed = aligner.mix(glob[pairs[:, 0], pairs[:, 1]], aligner.local.score_pairs(visual, text, pairs))
    out = mixed.min() - 1.0 - (glob.max() - glob)
    return out.index_put((pairs[:, 0], pairs[:, 1]), mixed), len(pairs) / len(visual)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="model.pt of a two_stage run")
    parser.add_argument("--out", type=Path, default=None, help="write directions.{csv,md} here")
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint)
    spec = validate(OmegaConf.create(state["config"]))
    model = build_model(spec, state.get("data_meta", {})).eval()
    model.load_state_dict(state["model"])
    split = create_dataset(spec.data[0], **spec.data[1]).split(spec.eval.split)
    items, captions, owner = subset(split, spec.eval.max_items)
    device = torch.device("cpu")
    visual = encode_all(model.vision, items, batch_size=256, device=device)
    text = encode_all(model.text, captions, batch_size=256, device=device)
    aligner = model.aligner
    i2t, t2i = aligner.query_scores(visual, text, "i2t"), aligner.query_scores(visual, text, "t2i")
    union, per_image = union_scores(aligner, visual, text)
    rows = [
        {
            "evaluation": "per direction (now)",
            **retrieval_metrics(i2t, owner, t2i_sim=t2i),
            "candidates re-ranked per image query": float(aligner.config.shortlist_length("i2t")),
        },
        {
            "evaluation": "union of both directions (removed)",
            **retrieval_metrics(union, owner),
            "candidates re-ranked per image query": per_image,
        },
    ]
    table = pd.DataFrame(rows)[["evaluation", *COLUMNS, "candidates re-ranked per image query"]].round(1)
    print(table.to_markdown(index=False))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "directions.csv", index=False)
        (args.out / "directions.md").write_text(table.to_markdown(index=False) + "\n")


if __name__ == "__main__":
    main()
