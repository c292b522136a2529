"""Named stages where a backbone can stop, and its two halves there: the stem (what a staged
feature cache stores) and the tail (what the `staged` encoder runs, trainable, on top of it).

A stage names the first module of the tail; the cache holds that module's input.

    mobilenet_v2           features.N (N = 1..18): the input of torchvision's `features[N]` — blocks
                           1..17 are the inverted-residual blocks, 18 the final 1×1 conv to 1280-d.
                           last_block = features.17 (the 7×7×160 activations after block 16; the tail
                           is block 17 + the final conv), last_2_blocks = features.16,
                           last_3_blocks = features.15, last_conv = features.18 (the conv alone).
    hf_text, minilm        layer.K (K = 0..L−1): the hidden states after K transformer layers
                           (hidden_states[K]) + the attention mask; the tail is layers K..L−1.
                           last_layer = layer.{L−1}, last_2_layers, last_3_layers likewise.

Aliases resolve to the `features.N` / `layer.K` form before anything is keyed on them, so both
spellings share one cache entry. Tails keep the original module indices in their parameter names
(`blocks.17.…`, `layer.5.…`), which is what layer-wise lr decay reads.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from finealign.checks import close_matches
from finealign.encoders.base import Encoder
from finealign.encoders.hf_text import HFTextEncoder
from finealign.encoders.mobilenet import MobileNetV2Encoder
from finealign.errors import ConfigError, ShapeError
from finealign.tokens import TokenBatch

#: Hugging Face model types whose layers the text tail can call (BERT's layer API; MiniLM is a BERT)
HF_MODEL_TYPES = ("bert", "roberta")


def _unknown(stage: Any, backbone: str, names: list[str], pattern_hint: str, prefix: str) -> ConfigError:
    # "block17", "layer5": the numbered form the user probably meant comes first
    digits = re.search(r"\d+$", str(stage))
    guess = f"{prefix}.{digits.group()}" if digits else None
    enumerated = any(n.startswith(f"{prefix}.") for n in names)  # else the numbers are not known yet
    numbered = [guess] if guess and guess != str(stage) and (guess in names or not enumerated) else []
    close = numbered + [n for n in close_matches(stage, names) if n not in numbered]
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ConfigError(f"unknown stage {stage!r} of {backbone}.{hint} Stages: {pattern_hint}")


class MobileNetStages:
    """Stages of torchvision's MobileNetV2 `features` (19 modules: stem conv, 17 blocks, final conv)."""

    backbone = "mobilenet_v2"
    count = 19
    aliases = {"last_block": 17, "last_2_blocks": 16, "last_3_blocks": 15, "last_conv": 18}

    def names(self) -> list[str]:
        return [*self.aliases, *(f"features.{n}" for n in range(1, self.count))]

    def first_module(self, stage: Any) -> int:
        """Index of the tail's first module in `features` (ConfigError with close matches)."""
        if stage in self.aliases:
            return self.aliases[stage]
        match = re.fullmatch(r"features\.(\d+)", str(stage))
        if match and 1 <= int(match.group(1)) < self.count:
            return int(match.group(1))
        raise _unknown(
            stage, self.backbone, self.names(), f"{', '.join(self.aliases)}, features.1 .. features.18", "features"
        )

    def resolve(self, encoder: Any, stage: Any) -> str:
        return f"features.{self.first_module(stage)}"

    def stem(self, encoder: Any, stage: str) -> Callable[[Tensor], TokenBatch]:
        head = encoder.backbone[: self.first_module(stage)]

        def run(images: Tensor) -> TokenBatch:
            fmap = head(images.contiguous(memory_format=torch.channels_last))
            tokens = fmap.flatten(2).transpose(1, 2)
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            return TokenBatch(tokens, mask, fmap.mean(dim=(2, 3)))

        return run

    def tail(self, encoder: Any, stage: str) -> MobileNetTail:
        return MobileNetTail(encoder.backbone, self.first_module(stage))

    def input_dim(self, encoder: Any, stage: str) -> int:
        """Channels of the activations the cache holds at `stage` (what the tail takes)."""
        first = self.first_module(stage)
        convs = [m for m in encoder.backbone[first].modules() if isinstance(m, nn.Conv2d)]
        return int(convs[0].in_channels)


class MobileNetTail(nn.Module):
    """`features[first:]` on cached (B, H·W, C) grid tokens → the final 1280-d grid and its mean.

    BatchNorm keeps its ImageNet running statistics (eval mode even while the blocks train): the
    affine weights and the convolutions learn, the statistics do not drift with small batches, and
    a tail that is not trained gives exactly the frozen backbone's features."""

    def __init__(self, features: nn.Sequential, first: int):
        super().__init__()
        self.blocks = nn.Sequential(OrderedDict((str(i), features[i]) for i in range(first, len(features))))

    def train(self, mode: bool = True) -> MobileNetTail:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, tokens: Tensor, attention: Tensor, keep: Tensor) -> TokenBatch:
        b, length, channels = tokens.shape
        side = math.isqrt(length)
        if side * side != length or not bool(attention.all()):
            raise ShapeError(f"the mobilenet_v2 tail needs a full square grid of tokens, got {length} per item")
        # (B, H·W, C) row-major is (B, H, W, C): permuting gives NCHW in channels-last strides, no copy
        fmap = self.blocks(tokens.reshape(b, side, side, channels).permute(0, 3, 1, 2))
        out = fmap.flatten(2).transpose(1, 2)  # a stride-2 block in the tail shrinks the grid: a new mask
        mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        return TokenBatch(out, mask, fmap.mean(dim=(2, 3)))


def _layers_of(model: Any) -> nn.ModuleList:
    model_type = getattr(model.config, "model_type", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if model_type not in HF_MODEL_TYPES or not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"stages of Hugging Face text models exist for {', '.join(HF_MODEL_TYPES)} (BERT's layer API, "
            f"MiniLM included), not for model type {model_type!r}"
        )
    return layers


class HFTextStages:
    """Stages of a BERT-style Hugging Face encoder: after layer K of L."""

    backbone = "hf_text"
    aliases = {"last_layer": 1, "last_2_layers": 2, "last_3_layers": 3}  # → layer.{L − n}

    def names(self, count: int | None = None) -> list[str]:
        return [*self.aliases, *(f"layer.{k}" for k in range(count or 0))]

    def check_name(self, stage: Any) -> None:
        """The spelling alone (the layer count needs the loaded model): ConfigError with close matches."""
        if stage not in self.aliases and not re.fullmatch(r"layer\.\d+", str(stage)):
            raise _unknown(
                stage, "a Hugging Face text encoder", self.names(), f"{', '.join(self.aliases)}, layer.K", "layer"
            )

    def first_layer(self, encoder: Any, stage: Any) -> int:
        count = len(_layers_of(encoder.backbone))
        if stage in self.aliases:
            first = count - self.aliases[stage]
        elif match := re.fullmatch(r"layer\.(\d+)", str(stage)):
            first = int(match.group(1))
        else:
            hint = f"{', '.join(self.aliases)}, layer.0 .. layer.{count - 1}"
            raise _unknown(stage, encoder.source, self.names(count), hint, "layer")
        if not 0 <= first < count:
            raise ConfigError(f"stage {stage!r} of {encoder.source}: the model has layers 0 .. {count - 1}")
        if not encoder.config.keep_special_tokens:
            raise ConfigError(
                "a staged text cache keeps every real position (the tail's attention needs them): leave "
                "keep_special_tokens=true and drop [CLS]/[SEP] with the cached dataset's text_tokens=words"
            )
        return first

    def resolve(self, encoder: Any, stage: Any) -> str:
        return f"layer.{self.first_layer(encoder, stage)}"

    def stem(self, encoder: Any, stage: str) -> Callable[[dict[str, Tensor]], TokenBatch]:
        index = self.first_layer(encoder, stage)

        def run(batch: dict[str, Tensor]) -> TokenBatch:
            inputs = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
            # hidden_states[K] is the model's own activation after K layers (embeddings at K = 0)
            hidden = encoder.backbone(**inputs, output_hidden_states=True).hidden_states[index]
            mask = inputs["attention_mask"].bool()
            return TokenBatch(hidden, mask).with_pooled()

        return run

    def tail(self, encoder: Any, stage: str) -> HFTextTail:
        return HFTextTail(encoder.backbone, self.first_layer(encoder, stage), encoder.config.pooling)

    def input_dim(self, encoder: Any, stage: str) -> int:
        return int(encoder.backbone.config.hidden_size)


def attention_bias(model_config: Any, hidden: Tensor, attention: Tensor) -> Any:
    """The attention mask a BERT layer takes, built as the model's own forward builds it."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers < 4.53: the additive (B, 1, 1, L) mask
        bias = (1.0 - attention[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        return bias
    return create_bidirectional_mask(model_config, hidden, attention.long())


class HFTextTail(nn.Module):
    """Layers K.. of a BERT-style encoder on cached hidden states; the global vector as the encoder
    defines it (`pooling`): the [CLS] state, or the mean over the positions kept for the aligners."""

    def __init__(self, model: Any, first: int, pooling: str):
        super().__init__()
        layers = _layers_of(model)
        self.layer = nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(first, len(layers))))
        self.model_config = model.config
        self.pooling = pooling

    def forward(self, hidden: Tensor, attention: Tensor, keep: Tensor) -> TokenBatch:
        bias = attention_bias(self.model_config, hidden, attention)
        for layer in self.layer:
            out = layer(hidden, bias)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = TokenBatch(hidden, keep).mean_pooled()
        return TokenBatch(hidden, keep, pooled)


def stages_of(encoder_class: Any) -> MobileNetStages | HFTextStages:
    """The stage definitions of an encoder class; ConfigError when it has none."""
    if isinstance(encoder_class, type) and issubclass(encoder_class, MobileNetV2Encoder):
        return MobileNetStages()
    if isinstance(encoder_class, type) and issubclass(encoder_class, HFTextEncoder):
        return HFTextStages()
    name = getattr(encoder_class, "__name__", encoder_class)
    raise ConfigError(f"encoder {name} has no named stages: stages exist for mobilenet_v2 and hf_text / minilm")


def check_stage_name(encoder_name: str, stage: Any) -> None:
    """A config-time check of a stage's spelling (no weights loaded); None means "no stage"."""
    if stage is None:
        return
    if not isinstance(stage, str) or not stage:
        raise ConfigError(f"a stage must be a name such as last_block or layer.5, got {stage!r}")
    from finealign.registry import registry

    stages = stages_of(registry("encoders").get(encoder_name))
    if isinstance(stages, MobileNetStages):
        stages.first_module(stage)
    else:
        stages.check_name(stage)


class StemEncoder(Encoder[Any]):
    """An encoder cut at a stage: the original's load/collate, forward = the stem's activations
    (raw, unprojected). What `finealign cache` runs to build a staged entry."""

    def __init__(self, encoder: Encoder[Any], stage: str):
        super().__init__()
        self.inner = encoder
        self.modality = encoder.modality
        stages = stages_of(type(encoder))
        self.stage = stages.resolve(encoder, stage)
        self.run = stages.stem(encoder, self.stage)
        self.embed_dim = stages.input_dim(encoder, self.stage)

    def load(self, raw: Any) -> Any:
        return self.inner.load(raw)

    def collate(self, items: Any) -> Any:
        return self.inner.collate(items)

    @torch.no_grad()
    def forward(self, batch: Any) -> TokenBatch:
        return self.run(batch)
