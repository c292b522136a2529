"""The encoder contract shared by vision, text, video and precomputed-feature encoders.

An encoder turns one modality's raw items into a TokenBatch in the joint embedding space:

    raw item (dataset)  --encoder.load-->  per-item input  --encoder.collate-->  batch input
    batch input         --encoder(batch)-->  TokenBatch(tokens (B, L, embed_dim), mask, pooled)

`load` runs in DataLoader workers (image decoding, transforms, feature reads); `collate` pads and
stacks; `forward` runs the backbone and the projection to `embed_dim`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from torch import nn

from finealign.tokens import TokenBatch

#: The Config dataclass of an encoder.
C = TypeVar("C")


class Encoder(nn.Module, Generic[C]):
    """Base class of every registered encoder. A subclass (`class MyEncoder(Encoder[MyConfig])`)
    sets `Config` and assigns `self.config`; the type parameter types `self.config`."""

    config: C

    #: "vision", "text" or "video" — which side of a retrieval pair this encoder serves.
    modality: str = "vision"

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim: int = 0

    def load(self, raw: Any) -> Any:
        """Turn one raw dataset item (path, PIL image, caption string, feature array) into input."""
        return raw

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch the per-item inputs produced by `load`."""
        raise NotImplementedError

    def forward(self, batch: Any) -> TokenBatch:  # noqa: D401
        raise NotImplementedError

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the (pre-trained) backbone, for freezing or a separate learning rate."""
        return []

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters learned from scratch (projections, small heads)."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]
