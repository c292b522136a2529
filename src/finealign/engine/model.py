"""Model assembly from a validated config: vision encoder, text encoder and aligner, each built by
name through the registry and held side by side (never fused), plus the loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from finealign.config import ExperimentSpec
from finealign.errors import ConfigError
from finealign.registry import config_class, create_aligner, create_encoder, create_loss, registry
from finealign.tokens import TokenBatch

if TYPE_CHECKING:
    from finealign.aligners.base import Aligner
    from finealign.encoders.base import Encoder


class RetrievalModel(nn.Module):
    """The three parts of a retrieval model: encode each modality, then score with the aligner."""

    def __init__(self, vision: Encoder[Any], text: Encoder[Any], aligner: Aligner[Any]):
        super().__init__()
        self.vision, self.text, self.aligner = vision, text, aligner

    def encode_images(self, batch: Any) -> TokenBatch:
        return self.vision(batch)

    def encode_texts(self, batch: Any) -> TokenBatch:
        return self.text(batch)

    def forward(self, images: Any, texts: Any) -> tuple[Tensor, TokenBatch, TokenBatch]:
        """(B_img, B_txt) similarities plus both modalities' token batches."""
        visual, text = self.encode_images(images), self.encode_texts(texts)
        return self.aligner(visual, text), visual, text

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [*self.vision.backbone_parameters(), *self.text.backbone_parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]


def _with_defaults(kind: str, name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """Fill options the component has but the config left null (e.g. a feature width from the data)."""
    options = dict(options)
    cfg_cls = config_class(registry(kind).get(name))
    fields = {f.name for f in dataclasses.fields(cfg_cls)} if cfg_cls else set()
    for key, value in defaults.items():
        if key in fields and options.get(key) is None and value is not None:
            options[key] = value
    return options


def _from_data(side: str, name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the data tells an encoder: its feature width and, for a feature cache, the cache's
    record of the encoder that made it (`source`: name, options, weights, stage). A staged cache
    (activations stopped at a stage) is refused by any encoder but `staged`: a head on
    intermediate activations would train silently on the wrong features."""
    from finealign.encoders.staged import reads_stages

    found = meta.get(side)
    record: dict[str, Any] = dict(found) if isinstance(found, Mapping) else {}
    stage = record.get("stage")
    if stage and not reads_stages(name):
        raise ConfigError(
            f"the data's {side} features stop at stage {stage} of {record.get('name')} (a staged cache), but "
            f"encoder.{side} is {name!r}: use encoder.{side}.name=staged (e.g. encoder=cached_staged), or an unstaged cache"
        )
    return {"in_dim": meta.get(f"{side}_dim"), "source": record or None}


def build_model(spec: ExperimentSpec, data_meta: Mapping[str, Any] | None = None) -> RetrievalModel:
    """Build the encoders and the aligner named in `spec`.

    data_meta may give the feature widths of precomputed data ("vision_dim", "text_dim"), which
    fill an encoder's `in_dim` when its config leaves it null, and a feature cache's record of each
    encoder ("vision", "text"), which fills a `staged` encoder's `source`.
    """
    meta = dict(data_meta or {})
    vname, voptions = spec.vision
    tname, toptions = spec.text
    vision = create_encoder(vname, **_with_defaults("encoders", vname, voptions, _from_data("vision", vname, meta)))
    text = create_encoder(tname, **_with_defaults("encoders", tname, toptions, _from_data("text", tname, meta)))
    aname, aoptions = spec.aligner
    aligner = create_aligner(aname, **_with_defaults("aligners", aname, aoptions, {"dim": spec.embed_dim}))
    return RetrievalModel(vision, text, aligner)


def fit_to_training_data(model: RetrievalModel, train_split: Any) -> None:
    """Let encoders that learn something from the training data before training do so (a word
    vocabulary from the training captions, e.g. the BiGRU text encoder's `build_vocab`)."""
    build_vocab = getattr(model.text, "build_vocab", None)
    if callable(build_vocab):
        build_vocab(list(train_split.captions))


def build_loss(spec: ExperimentSpec) -> nn.Module:
    name, options = spec.loss
    return create_loss(name, **options)


def loss_extras(visual: TokenBatch, text: TokenBatch) -> dict[str, Tensor]:
    """Global vectors for losses that use them (cmc): the pooled vectors, or masked token means."""
    return {
        "image_global": visual.pooled if visual.pooled is not None else visual.mean_pooled(),
        "text_global": text.pooled if text.pooled is not None else text.mean_pooled(),
    }
