"""CLIP towers through open_clip, with token outputs: the two towers already aligned, as TokenFlow
and DRL use them ("by modifying only the similarity function").

`openclip_vision`: the vision transformer's patch tokens (CLS excluded) and its pooled output,
both projected into the joint space with CLIP's own projection (`visual.proj`), so the pooled
vector equals `model.encode_image`. `openclip_text`: the text transformer's token states after
`ln_final`, projected with `text_projection`, masked up to and including the end-of-text token;
the pooled vector is the end-of-text state, equal to `model.encode_text`. Images go through the
model's own preprocessing transform; captions through its tokenizer.

Weights: `pretrained` is an open_clip tag (`openai`, `laion2b_s34b_b88k`, …; downloaded from the
hub in real use), `checkpoint_path` a local state dict, or neither for random initialisation
(tests). Both tower encoders of one model share a single loaded model.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from finealign.encoders.common import BackboneEncoder
from finealign.errors import ConfigError, ShapeError
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch


@dataclass
class OpenClipConfig:
    model_name: str = "ViT-B-32"  # as open_clip spells it (open_clip.list_models())
    pretrained: str | None = None  # an open_clip tag for model_name, e.g. "openai"; None: random init
    checkpoint_path: str | None = None  # a local state dict (takes the place of `pretrained`)
    freeze: bool = True  # zero-shot and frozen-feature use; false to fine-tune the tower
    embed_dim: int = 0  # 0: CLIP's joint space; > 0: an extra learned linear projection to this width

    def __post_init__(self) -> None:
        import open_clip

        models = open_clip.list_models()
        if self.model_name not in models:
            close = difflib.get_close_matches(str(self.model_name), models, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"open_clip has no model {self.model_name!r}{hint}")
        if self.pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if self.pretrained not in tags:
                raise ConfigError(
                    f"open_clip model {self.model_name!r} has no pretrained tag {self.pretrained!r} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
        if not isinstance(self.freeze, bool):
            raise ConfigError(f"freeze must be true or false, got {self.freeze!r}")
        if not isinstance(self.embed_dim, int) or isinstance(self.embed_dim, bool) or self.embed_dim < 0:
            raise ConfigError(f"embed_dim must be an int >= 0, got {self.embed_dim!r}")


@functools.lru_cache(maxsize=4)
def _load(model_name: str, pretrained: str | None, checkpoint_path: str | None) -> tuple[Any, Any, Any]:
    """(model, eval transform, tokenizer), built once per weights for both towers."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as exc:  # no network, or a hub that refuses
        raise ConfigError(
            f"cannot load open_clip {model_name!r} with pretrained={pretrained!r} ({type(exc).__name__}: {exc}); "
            "without network, download the weights elsewhere and pass checkpoint_path=<file>"
        ) from exc
    if checkpoint_path is not None:
        load_checkpoint_into(model, checkpoint_path)
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def load_checkpoint_into(model: nn.Module, path: str) -> None:
    """Load a local state dict; a tensor whose shape does not fit is a ShapeError naming it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ShapeError(
                f"{path}: {key} is {tuple(tensor.shape)} but the model's is {tuple(own[key].shape)} (another architecture?)"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ShapeError(f"{path} does not fit: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")


class _OpenClipTower(BackboneEncoder[OpenClipConfig]):
    Config = OpenClipConfig
    backbone: Any  # open_clip's modules, used through open_clip's own attributes (output_tokens, proj, ...)

    def __init__(self, config: OpenClipConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else OpenClipConfig()
        model, self.preprocess, self.tokenizer = _load(cfg.model_name, cfg.pretrained, cfg.checkpoint_path)
        self._attach(model)
        joint = int(model.visual.output_dim)
        self.project = nn.Linear(joint, cfg.embed_dim) if cfg.embed_dim else nn.Identity()
        self.embed_dim = cfg.embed_dim or joint
        self.set_frozen(cfg.freeze)

    def _attach(self, model: Any) -> None:
        raise NotImplementedError

    def weights_identity(self) -> dict[str, Any]:
        c = self.config
        return {"open_clip": c.model_name, "pretrained": c.pretrained, "checkpoint": c.checkpoint_path}

    def _out(self, tokens: Tensor, mask: Tensor, pooled: Tensor) -> TokenBatch:
        return TokenBatch(self.project(tokens), mask, self.project(pooled))


@ENCODERS.register("openclip_vision")
class OpenClipVisionEncoder(_OpenClipTower):
    """CLIP vision tower (open_clip): projected patch tokens + the projected pooled (CLS) vector."""

    modality = "vision"

    def _attach(self, model: Any) -> None:
        self.backbone = model.visual

    def load(self, raw: Any) -> Tensor:
        from PIL import Image

        image = raw if isinstance(raw, Image.Image) else Image.open(raw)
        return self.preprocess(image.convert("RGB"))

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(items))

    def forward(self, images: Tensor) -> TokenBatch:
        visual = self.backbone
        with self.backbone_grad_context():
            previous, visual.output_tokens = visual.output_tokens, True
            try:
                pooled, tokens = visual(images)
            finally:
                visual.output_tokens = previous
            if visual.proj is not None:
                tokens = tokens @ visual.proj  # CLIP's projection, applied to every patch token
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self._out(tokens, mask, pooled)


@ENCODERS.register("openclip_text")
class OpenClipTextEncoder(_OpenClipTower):
    """CLIP text tower (open_clip): projected token states up to end-of-text + the pooled EOT vector."""

    modality = "text"

    def _attach(self, model: Any) -> None:
        if hasattr(model, "text"):  # CustomTextCLIP: a separate text tower module
            raise ConfigError(f"open_clip model {self.config.model_name!r} has a custom text tower; not supported yet")
        # The text tower of the CLIP class is a set of attributes; a module keeps them together.
        self.backbone = nn.ModuleDict({
            "token_embedding": model.token_embedding, "transformer": model.transformer, "ln_final": model.ln_final,
        })  # fmt: skip
        self.backbone.register_buffer("positional_embedding", model.positional_embedding, persistent=False)
        self.positional_embedding = model.positional_embedding
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.pool_type = model.text_pool_type
        self.eos_id = getattr(model, "text_eos_id", None)

    def backbone_parameters(self) -> list[nn.Parameter]:
        extra = [self.positional_embedding] if isinstance(self.positional_embedding, nn.Parameter) else []
        proj = list(self.text_projection.parameters()) if isinstance(self.text_projection, nn.Module) else (
            [self.text_projection] if isinstance(self.text_projection, nn.Parameter) else [])
        return [*self.backbone.parameters(), *extra, *proj]

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        self.backbone["transformer"].grad_checkpointing = enable
        return True

    def load(self, raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ShapeError(f"a caption must be a non-empty string, got {raw!r}")
        return raw

    def collate(self, items: Sequence[str]) -> Tensor:
        return self.tokenizer(list(items))

    def forward(self, ids: Tensor) -> TokenBatch:
        from open_clip.transformer import text_global_pool

        b = self.backbone
        with self.backbone_grad_context():
            cast = b["transformer"].get_cast_dtype()
            x = b["token_embedding"](ids).to(cast) + self.positional_embedding.to(cast)
            x = b["ln_final"](b["transformer"](x, attn_mask=self.attn_mask))
            pooled = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)
            if isinstance(self.text_projection, nn.Linear):
                x, pooled = self.text_projection(x), self.text_projection(pooled)
            elif self.text_projection is not None:
                x, pooled = x @ self.text_projection, pooled @ self.text_projection
        # the token the pooled vector comes from closes the caption: mask everything up to it
        if self.pool_type == "eos" and self.eos_id is not None:
            eot = (ids == self.eos_id).int().argmax(dim=-1)
        elif self.pool_type == "argmax":  # OpenAI's tokenizer: end-of-text has the largest id
            eot = ids.argmax(dim=-1)
        else:
            eot = (ids != 0).sum(dim=-1) - 1
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] <= eot[:, None]
        return self._out(x, mask, pooled)
