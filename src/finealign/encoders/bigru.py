"""A bidirectional GRU over learned word embeddings (the SCAN/CHAN text encoder)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from finealign.checks import check_positive_int
from finealign.encoders.base import Encoder
from finealign.encoders.vocabulary import Vocabulary
from finealign.errors import ConfigError, DataError
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch


@dataclass
class BiGRUConfig:
    embed_dim: int = 1024  # GRU hidden size = token width (both directions are averaged)
    word_dim: int = 300
    num_layers: int = 1
    dropout: float = 0.0  # between GRU layers
    min_count: int = 1  # words seen fewer times in the training captions map to <unk>
    max_length: int = 64  # words kept per caption

    def __post_init__(self) -> None:
        for key in ("embed_dim", "word_dim", "num_layers", "min_count", "max_length"):
            check_positive_int(key, getattr(self, key))
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")


@ENCODERS.register("bigru")
class BiGRUEncoder(Encoder[BiGRUConfig]):
    """Word embeddings + BiGRU; tokens are per-word states (mean of both directions).

    The vocabulary comes from the training captions: call `build_vocab(captions)` before use. It is
    stored in the state dict, so loading a checkpoint restores the same word ids.
    """

    Config = BiGRUConfig
    modality = "text"

    def __init__(self, config: BiGRUConfig | None = None):
        super().__init__()
        self.config = config or BiGRUConfig()
        self.embed_dim = self.config.embed_dim
        self.vocab: Vocabulary | None = None
        self.embedding = nn.Embedding(2, self.config.word_dim, padding_idx=0)
        self.gru = nn.GRU(
            self.config.word_dim,
            self.config.embed_dim,
            num_layers=self.config.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=self.config.dropout if self.config.num_layers > 1 else 0.0,
        )
        # A checkpoint carries its vocabulary: resize the embedding before its weights load.
        self._register_load_state_dict_pre_hook(self._restore_vocab_hook)

    # -- vocabulary ---------------------------------------------------------------------------
    def build_vocab(self, captions: Iterable[str]) -> Vocabulary:
        """Build the vocabulary from training captions and (re)initialise the word embeddings."""
        vocab = Vocabulary.build(captions, self.config.min_count)
        self._set_vocab(vocab)
        return vocab

    def _set_vocab(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        device = self.embedding.weight.device
        self.embedding = nn.Embedding(len(vocab), self.config.word_dim, padding_idx=0).to(device)

    def get_extra_state(self) -> dict[str, Any]:
        return {"words": list(self.vocab.words) if self.vocab else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state and state.get("words") and (self.vocab is None or self.vocab.words != state["words"]):
            self._set_vocab(Vocabulary(state["words"][2:]))

    def _restore_vocab_hook(self, state_dict, prefix, *args) -> None:
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self.set_extra_state(extra)

    # -- encoder contract ---------------------------------------------------------------------
    def load(self, raw: Any) -> Tensor:
        if self.vocab is None:
            raise ConfigError("the bigru encoder has no vocabulary yet: call build_vocab(train_captions)")
        if not isinstance(raw, str):
            raise DataError(f"a text encoder needs a caption string, got {type(raw).__name__}")
        return torch.tensor(self.vocab.encode(raw)[: self.config.max_length], dtype=torch.long)

    def collate(self, items: Sequence[Tensor]) -> dict[str, Tensor]:
        lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
        ids = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
        for i, x in enumerate(items):
            ids[i, : len(x)] = x
        return {"ids": ids, "lengths": lengths}

    def forward(self, batch: dict[str, Tensor]) -> TokenBatch:
        ids, lengths = batch["ids"], batch["lengths"]
        packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        tokens = out.view(*out.shape[:2], 2, self.config.embed_dim).mean(2)
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        return TokenBatch(tokens, mask).with_pooled()
