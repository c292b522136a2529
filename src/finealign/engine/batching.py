"""Training batches of (image, caption) pairs with a `positives` matrix.

Each epoch visits either every caption once with its image (`pairs: captions`) or every image once
with one random caption (`pairs: images`), in an order drawn from (seed, epoch) alone, so a resumed
run sees exactly the batches an uninterrupted one would. Images that occur twice in a batch (two of
their captions were drawn) are encoded once: the batch holds B_img unique images and B_txt
captions, and positives[u, b] is True when caption b describes image u.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from finealign.data.base import RetrievalSplit
from finealign.devices import to_device  # noqa: F401  (one home: finealign.devices; the engine imports it from here)
from finealign.resources import check_memory


def epoch_pairs(split: RetrievalSplit, mode: str, seed: int, epoch: int) -> Tensor:
    """(P, 2) long tensor of (item, caption) pairs for one epoch, shuffled by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    owner = split.caption_item.long()
    if mode == "captions":
        captions = torch.randperm(len(owner), generator=g)
    else:  # one random caption per image
        order = torch.randperm(len(owner), generator=g)
        first = torch.full((split.num_items,), -1, dtype=torch.long)
        first[owner[order].flip(0)] = order.flip(0)  # the first drawn caption of each item wins
        captions = first[first >= 0]
        captions = captions[torch.randperm(len(captions), generator=g)]
    return torch.stack([owner[captions], captions], dim=1)


class PairDataset(Dataset):
    """Loads the encoder inputs of each (item, caption) pair."""

    def __init__(self, split: RetrievalSplit, pairs: Tensor, vision: Any, text: Any):
        self.split, self.pairs, self.vision, self.text = split, pairs, vision, text

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[int, int, Any, Any]:
        item, caption = (int(x) for x in self.pairs[k])
        return item, caption, self.vision.load(self.split.raw_item(item)), self.text.load(self.split.captions[caption])


@dataclass
class PairBatch:
    images: Any  # the vision encoder's collated input for the B_img unique images
    texts: Any  # the text encoder's collated input for the B_txt captions
    positives: Tensor  # (B_img, B_txt) bool
    item_ids: Tensor  # (B_img,) dataset indices of the images
    caption_ids: Tensor  # (B_txt,)

    def caption_items(self) -> Tensor:
        """(B_txt,) dataset index of each caption's image (its one positive)."""
        return self.item_ids[self.positives.to(torch.uint8).argmax(dim=0)]


class PairCollator:
    """Deduplicates images and builds the positives matrix."""

    def __init__(self, vision: Any, text: Any):
        self.vision, self.text = vision, text

    def __call__(self, samples: Sequence[tuple[int, int, Any, Any]]) -> PairBatch:
        unique: dict[int, Any] = {}
        for item, _, image, _ in samples:
            unique.setdefault(item, image)
        item_ids = torch.tensor(list(unique), dtype=torch.long)
        owners = torch.tensor([s[0] for s in samples], dtype=torch.long)
        return PairBatch(
            images=self.vision.collate(list(unique.values())),
            texts=self.text.collate([s[3] for s in samples]),
            positives=item_ids[:, None] == owners[None, :],
            item_ids=item_ids,
            caption_ids=torch.tensor([s[1] for s in samples], dtype=torch.long),
        )


def epoch_loader(
    split: RetrievalSplit,
    model: Any,
    *,
    mode: str,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of `batch_size` pairs; with world_size > 1, this rank's share of each global batch of
    `batch_size` pairs (batch_size / world_size of them, by a DistributedSampler), so the ranks
    together see exactly the batches one process would."""
    pairs = epoch_pairs(split, mode, seed, epoch)
    dataset = PairDataset(split, pairs, model.vision, model.text)
    sampler: DistributedSampler | None = None
    if world_size > 1:
        # drop_last: every rank gets floor(P / W) pairs, so there are floor(P / B) full global batches
        # as in one process; shuffle=False: the order is already drawn from (seed, epoch).
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=True)
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        shuffle=False,  # the order is already drawn from (seed, epoch)
        sampler=sampler,
        drop_last=len(pairs) > batch_size,  # a tiny last batch gives a noisy contrastive step
        num_workers=num_workers,
        collate_fn=PairCollator(model.vision, model.text),
    )


def check_batch_fits(images: int, captions: int, device: Any, amp: str = "none") -> None:
    """ResourceError before training when one step's score matrix cannot fit: every loss reads the
    (B_img, B_txt) scores and backward makes their gradient, so two such matrices are a lower
    bound of a step's memory (tokens, activations and the loss's temporaries come on top)."""
    itemsize = 2 if amp in ("bf16", "fp16") else 4
    matrix = images * captions * itemsize
    check_memory(
        f"a training step on a batch of {images} images × {captions} captions",
        {"scores": matrix, "their gradient": matrix},
        device,
        "lower train.batch_size (train.accumulate keeps the optimiser step's size, not the contrastive batch)",
    )
