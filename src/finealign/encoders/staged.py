"""The rest of a backbone, trainable, on activations a staged feature cache stored (+ the usual head).

A staged cache (`data.vision_stage` / `data.text_stage`, encoders.stages) stops a backbone at a
named stage; this encoder rebuilds the same backbone from the same weights, keeps only its tail
(the blocks after the stage) and runs it on the cached activations, then the `precomputed` head
(linear / mlp / transformer) maps the final tokens to `embed_dim`. The tail is the encoder's
backbone: it gets `train.backbone_lr`, layer-wise decay, `freeze_backbone` and
`unfreeze_backbone_epoch` like any pre-trained backbone; its BatchNorm keeps its running statistics.

Which backbone, options and stage: the engine fills `source` with the cache's record of its encoder
(meta.json's "vision" / "text": name, complete options, weight files, stage), and the encoder
takes all three from it. `backbone` / `backbone_options` / `stage` may be given too (e.g. without
a cache); when both are there they must agree with the cache, or it is a ConfigError naming the
difference. A cache whose weight files differ from the ones this backbone loads is a DataError.

Input rows are the cached dataset's: {"tokens", "mask", "pooled"} plus "attention_mask" when the
aligners see fewer positions than the tail attends to (`text_tokens: words`): the tail attends
over every real position, and its output is masked to the kept ones afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor

from finealign.encoders.common import BackboneEncoder
from finealign.encoders.precomputed import PrecomputedConfig, apply_head, build_head
from finealign.encoders.stages import stages_of
from finealign.errors import ConfigError, DataError, ShapeError
from finealign.registry import ENCODERS, create_encoder, registry
from finealign.tokens import TokenBatch


class StagedItem(TypedDict):
    tokens: Tensor  # (L, d) the item's real positions (what the tail attends over)
    keep: Tensor  # (L,) bool: which of them the aligners see


class StagedBatch(TypedDict):
    tokens: Tensor  # (B, L, d) zero-padded
    attention: Tensor  # (B, L) bool: real positions
    keep: Tensor  # (B, L) bool: positions the aligners see (a subset of attention)


@dataclass
class StagedConfig(PrecomputedConfig):
    """The head options of `precomputed` (in_dim: the cached activations' width, from the data),
    plus which backbone tail runs under it."""

    backbone: str | None = None  # encoder whose tail runs here (null: the cache's)
    backbone_options: dict[str, Any] = field(default_factory=dict)  # its options (empty: the cache's)
    stage: str | None = None  # where the cache stopped (null: the cache's); see encoders.stages
    source: dict[str, Any] | None = None  # the cache's record of its encoder: filled by the engine
    freeze: bool = False  # keep the tail fixed (eval mode, no gradients)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.backbone_options, dict):
            raise ConfigError(f"backbone_options must be a mapping, got {self.backbone_options!r}")
        if self.source is not None and not isinstance(self.source, dict):
            raise ConfigError(f"source must be a cache's encoder record (a mapping), got {self.source!r}")


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {a.get(k, '<unset>')!r} vs {b.get(k, '<unset>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


@ENCODERS.register("staged")
class StagedEncoder(BackboneEncoder[StagedConfig]):
    """A backbone's last block(s), trainable, on a staged feature cache, + a learned head."""

    Config = StagedConfig
    reads_stages = True  # the engine fills `source` from the data and pairs it only with staged caches

    def __init__(self, config: StagedConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else StagedConfig()
        self.modality = cfg.modality
        name, options, stage = self._plan(cfg)
        if "embed_dim" in options and options["embed_dim"] != 0:
            raise ConfigError(f"backbone_options.embed_dim must be 0 (the head projects), got {options['embed_dim']!r}")
        whole = create_encoder(name, **{**options, "embed_dim": 0})
        self._check_source(cfg.source, name, whole)
        if whole.modality != cfg.modality:
            raise ConfigError(f"staged {cfg.modality} encoder over {name}, a {whole.modality} backbone: set modality")
        stages = stages_of(type(whole))
        self.stage = stages.resolve(whole, stage)
        if cfg.source is not None and cfg.source["stage"] != self.stage:
            raise ConfigError(
                f"staged {cfg.modality} encoder: stage {stage!r} ({self.stage}) but the cache stopped at "
                f"{cfg.source['stage']}: leave encoder.{cfg.modality}.stage null to follow the cache"
            )
        self.in_dim = stages.input_dim(whole, self.stage)
        if cfg.in_dim is not None and cfg.in_dim != self.in_dim:
            raise ShapeError(
                f"the cached {cfg.modality} activations are {cfg.in_dim}-d but {name} at {self.stage} takes {self.in_dim}-d"
            )
        self.backbone = stages.tail(whole, self.stage)  # the rest of `whole` is dropped here
        self.raw_dim = int(whole.raw_dim)
        self.embed_dim = cfg.embed_dim or self.raw_dim
        self.proj, self.context = build_head(cfg, self.raw_dim)
        self.set_frozen(cfg.freeze)

    @staticmethod
    def _plan(cfg: StagedConfig) -> tuple[str, dict[str, Any], str]:
        """(backbone name, options, stage): the config's, else the cache's."""
        source = cfg.source
        if source is not None and not source.get("stage"):
            raise ConfigError(
                f"the data's {cfg.modality} features are a backbone's final output (an unstaged cache): the "
                f"staged encoder needs a staged cache (data.{cfg.modality}_stage=..., e.g. data=flickr8k_staged)"
            )
        name = cfg.backbone or (source or {}).get("name")
        stage = cfg.stage or (source or {}).get("stage")
        if not name or not stage:
            raise ConfigError(
                "the staged encoder needs a staged cache (the engine fills encoder.*.source from it) or "
                "backbone + stage (e.g. backbone=mobilenet_v2, stage=last_block)"
            )
        if source is not None and name != source.get("name"):
            raise ConfigError(
                f"staged {cfg.modality} encoder: backbone {name!r} but the cache holds {source.get('name')!r} activations"
            )
        options = dict(cfg.backbone_options) or dict((source or {}).get("options") or {})
        return name, options, stage

    @staticmethod
    def _check_source(source: dict[str, Any] | None, name: str, whole: Any) -> None:
        """The backbone built here is the one the cache ran: same complete options, same weights."""
        if source is None:
            return
        config = getattr(whole, "config", None)
        if dataclasses.is_dataclass(config) and not isinstance(config, type) and source.get("options") is not None:
            differ = _differences(dataclasses.asdict(config), source["options"])
            if differ:
                raise ConfigError(f"staged encoder: {name} options differ from the cache's ({'; '.join(differ)})")
        weights = whole.weights_identity() if hasattr(whole, "weights_identity") else {}
        if source.get("weights") is not None and weights != source["weights"]:
            raise DataError(
                f"the staged cache was built from {name} weights {source['weights']}, but this backbone loads "
                f"{weights}: rebuild the cache (a changed weight file gives it a new key) or restore the weights"
            )

    def load(self, raw: Any) -> StagedItem:
        if not isinstance(raw, dict) or "tokens" not in raw:
            raise ShapeError(f"the staged encoder reads cached activation rows (dicts), got {type(raw).__name__}")
        tokens = torch.from_numpy(np.array(raw["tokens"], dtype=np.float32))
        if tokens.dim() != 2:
            raise ShapeError(f"staged item tokens must be (L, d), got shape {tuple(tokens.shape)}")
        full = torch.ones(len(tokens), dtype=torch.bool)
        keep = full if raw.get("mask") is None else torch.from_numpy(np.array(raw["mask"], dtype=bool))
        attention = raw.get("attention_mask")
        real = keep if attention is None else torch.from_numpy(np.array(attention, dtype=bool))
        if not bool(keep[real].any()):
            raise ShapeError("staged item has no position left for the aligners (its mask is all False)")
        return {"tokens": tokens[real], "keep": keep[real]}

    def collate(self, items: Sequence[StagedItem]) -> StagedBatch:
        length = max(len(item["tokens"]) for item in items)
        tokens = torch.zeros(len(items), length, items[0]["tokens"].shape[1])
        attention = torch.zeros(len(items), length, dtype=torch.bool)
        keep = torch.zeros(len(items), length, dtype=torch.bool)
        for i, item in enumerate(items):
            n = len(item["tokens"])
            tokens[i, :n], attention[i, :n], keep[i, :n] = item["tokens"], True, item["keep"]
        return {"tokens": tokens, "attention": attention, "keep": keep}

    def forward(self, batch: StagedBatch) -> TokenBatch:
        tokens = batch["tokens"]
        if tokens.shape[-1] != self.in_dim:
            raise ShapeError(
                f"staged {self.modality} activations are {tokens.shape[-1]}-d but the tail at {self.stage} takes {self.in_dim}-d"
            )
        with self.backbone_grad_context():
            out = self.backbone(tokens, batch["attention"], batch["keep"])
        return apply_head(self.proj, self.context, out.tokens, out.mask, out.pooled)


def reads_stages(encoder_name: str) -> bool:
    """Whether an encoder runs on staged activations (and so takes a staged cache's `source`)."""
    return bool(getattr(registry("encoders").get(encoder_name), "reads_stages", False))
