"""CLIP towers through open_clip, with token outputs: the two towers already aligned, as TokenFlow
and DRL use them ("by modifying only the similarity function").

`openclip_vision`: the vision tower's patch tokens (CLS excluded) and its pooled output, both
projected into the joint space with the tower's own projection (`visual.proj` of open_clip's
VisionTransformer, the `head` of a timm-trunk tower), so the pooled vector equals
`model.encode_image`. `openclip_text`: the text transformer's token states after its final norm,
projected with the tower's text projection, masked to the caption's real tokens (up to and
including the end-of-text token the pooled vector comes from); the pooled vector equals
`model.encode_text`. Images go through the model's own preprocessing transform; captions through
its tokenizer.

Supported towers (`SUPPORTED`): vision — open_clip's VisionTransformer (ViT-*, without an
attention pooler) and timm trunks with token outputs (e.g. SigLIP's `vit_*_siglip_*`); text —
CLIP's own text transformer (`model.transformer`), a custom text tower (`model.text`, CustomTextCLIP:
SigLIP, …) that is a TextTransformer, or a Hugging Face encoder (HFTextEncoder: roberta-ViT-B-32,
xlm-roberta-*, …). Others (ModifiedResNet `RN50*`, convolutional timm trunks, CoCa's text tower)
are refused with a ConfigError naming what is supported.

Weights: `pretrained` is an open_clip tag (`openai`, `laion2b_s34b_b88k`, …; downloaded from the
hub in real use), `checkpoint_path` a local state dict (it takes the place of the download; the
tag, if given too, still picks the preprocessing and QuickGELU the weights were trained with), or
neither for random initialisation (tests). A model is built (or downloaded) once per process and
weights; each tower encoder then takes its own copy of its half, so fine-tuning one never changes
another.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from finealign.checks import check_bool, check_int, close_matches
from finealign.encoders.common import BackboneEncoder, file_identity
from finealign.errors import ConfigError, ShapeError
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch

SUPPORTED = (
    "vision: open_clip VisionTransformer (ViT-*) or a timm ViT trunk (e.g. *-SigLIP); "
    "text: CLIP's text transformer, a custom TextTransformer text tower (e.g. *-SigLIP) "
    "or a Hugging Face text tower (e.g. roberta-ViT-B-32)"
)


@dataclass
class OpenClipConfig:
    model_name: str = "ViT-B-32"  # as open_clip spells it (open_clip.list_models())
    pretrained: str | None = None  # an open_clip tag for model_name, e.g. "openai"; None: random init
    checkpoint_path: str | None = None  # a local state dict (takes the place of the download)
    freeze: bool = True  # zero-shot and frozen-feature use; false to fine-tune the tower
    embed_dim: int = 0  # 0: CLIP's joint space; > 0: an extra learned linear projection to this width

    def __post_init__(self) -> None:
        try:
            import open_clip
        except ImportError as exc:
            raise ConfigError(
                "the openclip_vision / openclip_text encoders need open_clip: pip install 'finealign[openclip]'"
            ) from exc
        models = open_clip.list_models()
        if self.model_name not in models:
            close = close_matches(self.model_name, models)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"open_clip has no model {self.model_name!r}{hint} "
                f"(open_clip offers {len(models)}: {', '.join(models)})"
            )
        if self.pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if self.pretrained not in tags:
                close = close_matches(self.pretrained, tags)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ConfigError(
                    f"open_clip model {self.model_name!r} has no pretrained tag {self.pretrained!r}{hint} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
        if self.checkpoint_path is not None and not Path(self.checkpoint_path).expanduser().is_file():
            hint = f"; {where_to_place(self.model_name, self.pretrained)}" if self.pretrained else ""
            raise ConfigError(f"checkpoint_path {self.checkpoint_path!r} is not a file{hint}")
        check_bool("freeze", self.freeze)
        check_int("embed_dim", self.embed_dim, low=0)


def where_to_place(model_name: str, pretrained: str) -> str:
    """Which file the tag's weights are, where open_clip looks for it, and how to pass it instead."""
    import open_clip
    from open_clip.pretrained import has_hf_hub

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if cfg.get("hf_hub") and (has_hf_hub() or not cfg.get("url")):  # open_clip prefers the hub when it can
        repo, name = posixpath.split(cfg["hf_hub"])  # "org/repo/" (default file names) or "org/repo/file"
        files = name or "open_clip_model.safetensors or open_clip_pytorch_model.bin"
        source = (
            f"the file {files} of the Hugging Face repo {repo!r}; with it in the Hugging Face cache "
            f"($HF_HUB_CACHE, default ~/.cache/huggingface/hub; e.g. `huggingface-cli download {repo}` on a "
            "machine with network, then copy the cache over) open_clip loads it offline"
        )
    elif cfg.get("url"):
        file = cfg["url"].rsplit("/", 1)[-1]
        source = f"{cfg['url']}, which open_clip looks for as ~/.cache/clip/{file}"
    else:
        source = "not listed by open_clip"
    return (
        f"the weights of {model_name}/{pretrained} are {source}; or download that file and pass "
        f"checkpoint_path=/path/to/it (keep pretrained={pretrained} for its preprocessing)"
    )


@functools.lru_cache(maxsize=4)
def _load(model_name: str, pretrained: str | None, checkpoint_path: str | None) -> tuple[Any, Any, Any]:
    """(model, eval transform, tokenizer), built once per weights for both towers."""
    import open_clip

    kwargs: dict[str, Any] = {}
    download = pretrained
    if checkpoint_path is not None:
        download = None  # the local file replaces the download (and a Hugging Face text tower's weights) ...
        kwargs["pretrained_text"] = False
        if pretrained is not None:  # ... but the tag still says how images were normalised, and the activation
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            kwargs.update(image_mean=cfg.get("mean"), image_std=cfg.get("std"),
                          image_interpolation=cfg.get("interpolation"), image_resize_mode=cfg.get("resize_mode"),
                          force_quick_gelu=bool(cfg.get("quick_gelu", False)))  # fmt: skip
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=download, **kwargs)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # no network, or a hub that refuses
        text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
        hub = sorted({text_cfg[k] for k in ("hf_model_name", "hf_tokenizer_name") if text_cfg.get(k)})
        if download is not None:
            hint = where_to_place(model_name, download)
        elif hub:
            hint = (f"its text tower / tokenizer come from the Hugging Face hub ({', '.join(hub)}): they must be in "
                    "the Hugging Face cache ($HF_HUB_CACHE, default ~/.cache/huggingface/hub)")  # fmt: skip
        else:
            raise
        raise ConfigError(
            f"cannot load open_clip {model_name!r} with pretrained={pretrained!r} ({type(exc).__name__}: {exc}). "
            f"Without network: {hint}"
        ) from exc
    if checkpoint_path is not None:
        load_checkpoint_into(model, str(Path(checkpoint_path).expanduser()))
    return model.eval(), preprocess, tokenizer


def load_checkpoint_into(model: nn.Module, path: str) -> None:
    """Load a local state dict (.pt/.pth/.bin, .safetensors, or open_clip's training checkpoint with
    its `state_dict` and `module.` prefixes); a tensor whose shape does not fit is a ShapeError naming it."""
    from open_clip.factory import load_state_dict

    try:
        state = dict(load_state_dict(path))  # weights only: no pickled code runs
    except RuntimeError as exc:
        if "TorchScript" not in str(exc):
            raise
        # OpenAI's own release (ViT-B-32.pt) is a TorchScript archive: its state dict has open_clip's names
        state = dict(torch.jit.load(path, map_location="cpu").state_dict())
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
    own = model.state_dict()
    state.pop("text.transformer.embeddings.position_ids", None)  # older transformers kept it
    for key in {n for n, _ in model.named_buffers()} - set(own):  # buffers the model rebuilds (attn_mask)
        state.pop(key, None)
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            if own[key].numel() == tensor.numel() == 1:  # logit_scale saved as a scalar or (1,)
                state[key] = tensor.reshape(own[key].shape)
                continue
            raise ShapeError(
                f"{path}: {key} is {tuple(tensor.shape)} but the model's is {tuple(own[key].shape)} (another architecture?)"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ShapeError(f"{path} does not fit: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")


def _project(x: Tensor, projection: Any) -> Tensor:
    """Apply a tower's projection (a module, a matrix or None) to the last dimension."""
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection


class _OpenClipTower(BackboneEncoder[OpenClipConfig]):
    Config = OpenClipConfig
    backbone: Any  # open_clip's modules, used through open_clip's own attributes (output_tokens, proj, ...)

    def __init__(self, config: OpenClipConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else OpenClipConfig()
        pristine, self.preprocess, self.tokenizer = _load(cfg.model_name, cfg.pretrained, cfg.checkpoint_path)
        # A private copy: training one tower (or one sweep trial) must never change the weights the
        # next encoder of the same model starts from. The other tower's half is freed with `model`.
        model = copy.deepcopy(pristine)
        self._attach(model)
        import open_clip

        joint = int(open_clip.get_model_config(cfg.model_name)["embed_dim"])  # CLIP's joint space
        self.project = nn.Linear(joint, cfg.embed_dim) if cfg.embed_dim else nn.Identity()
        self.embed_dim = cfg.embed_dim or joint
        self.set_frozen(cfg.freeze)

    def _attach(self, model: Any) -> None:
        raise NotImplementedError

    def _refuse(self, what: str) -> ConfigError:
        return ConfigError(
            f"open_clip model {self.config.model_name!r}: {what} has no token outputs finealign "
            f"supports (supported: {SUPPORTED})"
        )

    def weights_identity(self) -> dict[str, Any]:
        c = self.config
        checkpoint = file_identity(Path(c.checkpoint_path).expanduser()) if c.checkpoint_path else None
        identity = {"open_clip": c.model_name, "pretrained": c.pretrained, "checkpoint": checkpoint}
        if c.pretrained is None and c.checkpoint_path is None:
            # random init differs between processes: a feature cache must key on the weights themselves
            digest = hashlib.sha1()
            for p in self.backbone_parameters():
                digest.update(p.detach().cpu().float().contiguous().numpy().tobytes())
            identity["random_init_sha1"] = digest.hexdigest()
        return identity

    def _out(self, tokens: Tensor, mask: Tensor, pooled: Tensor) -> TokenBatch:
        return TokenBatch(self.project(tokens), mask, self.project(pooled))


@ENCODERS.register("openclip_vision")
class OpenClipVisionEncoder(_OpenClipTower):
    """CLIP vision tower (open_clip ViT or timm ViT trunk): projected patch tokens + the pooled vector."""

    modality = "vision"

    def _attach(self, model: Any) -> None:
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        visual = model.visual
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None:  # CoCa: its "tokens" are attention-pool queries, not patches
                raise self._refuse("a vision transformer with an attention pooler")
            self.kind = "vit"
        elif isinstance(visual, TimmModel):
            if not hasattr(visual.trunk, "num_prefix_tokens") or "pool" in dict(visual.head.named_children()):
                # a convolutional trunk (a feature map, pooled by timm or an attention-pool head)
                raise self._refuse(f"the timm trunk {type(visual.trunk).__name__}")
            self.kind = "timm"
        else:
            raise self._refuse(f"the vision tower {type(visual).__name__}")
        self.backbone = visual

    def load(self, raw: Any) -> Tensor:
        from PIL import Image

        image = raw if isinstance(raw, Image.Image) else Image.open(raw)
        return self.preprocess(image.convert("RGB"))

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(items))

    def forward(self, images: Tensor) -> TokenBatch:
        visual = self.backbone
        with self.backbone_grad_context():
            if self.kind == "vit":
                previous, visual.output_tokens = visual.output_tokens, True
                try:
                    pooled, tokens = visual(images)
                finally:
                    visual.output_tokens = previous
                tokens = _project(tokens, visual.proj)  # CLIP's projection, applied to every patch token
            else:
                pooled, tokens = self._timm_forward(images)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self._out(tokens, mask, pooled)

    def _timm_forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The trunk once: pooled = head(trunk's own pooling), tokens = head(each patch token)."""
        trunk, head = self.backbone.trunk, self.backbone.head
        features = trunk.forward_features(images)
        if features.ndim != 3:
            raise self._refuse(f"the timm trunk {type(trunk).__name__} (its features are a {features.ndim}-d map)")
        pooled = head(trunk.forward_head(features))
        tokens = features[:, getattr(trunk, "num_prefix_tokens", 0) :]
        if getattr(trunk, "num_classes", 0):  # the trunk's classifier is the projection (timm_proj "")
            tokens = trunk.get_classifier()(tokens)
        return pooled, head(tokens)


@ENCODERS.register("openclip_text")
class OpenClipTextEncoder(_OpenClipTower):
    """CLIP text tower (open_clip, custom or HF text towers too): projected token states + the pooled vector."""

    modality = "text"

    def _attach(self, model: Any) -> None:
        from open_clip.hf_model import HFTextEncoder
        from open_clip.transformer import TextTransformer

        if not hasattr(model, "text"):  # the CLIP class: the text tower is a set of attributes
            self.kind = "clip"
            self.backbone = nn.ModuleDict({
                "token_embedding": model.token_embedding, "transformer": model.transformer,
                "ln_final": model.ln_final,
            })  # fmt: skip
            self.positional_embedding = model.positional_embedding
            self.text_projection = model.text_projection
            self.register_buffer("attn_mask", model.attn_mask, persistent=False)
            self.pool_type = model.text_pool_type
            self.eos_id = getattr(model, "text_eos_id", None)
            self.pad_id = 0
        elif isinstance(model.text, TextTransformer):
            if model.text.cls_emb is not None:  # CoCa: pooled from an appended CLS, tokens before ln_final
                raise self._refuse("a text tower with an appended CLS embedding (CoCa)")
            self.kind = "custom"
            self.backbone = model.text
            self.pool_type, self.eos_id, self.pad_id = model.text.pool_type, model.text.eos_id, model.text.pad_id
        elif isinstance(model.text, HFTextEncoder):
            self.kind = "hf"
            self.backbone = model.text
            self.pool_type, self.eos_id = "hf", None
            self.pad_id = model.text.config.pad_token_id
        else:
            raise self._refuse(f"the text tower {type(model.text).__name__}")
        hf_tokenizer: Any = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps one
        if self.kind != "hf" and getattr(hf_tokenizer, "pad_token_id", None) is not None:
            self.pad_id = hf_tokenizer.pad_token_id

    def backbone_parameters(self) -> list[nn.Parameter]:
        if self.kind != "clip":
            return list(self.backbone.parameters())
        extra = [self.positional_embedding] if isinstance(self.positional_embedding, nn.Parameter) else []
        proj = (
            list(self.text_projection.parameters())
            if isinstance(self.text_projection, nn.Module)
            else ([self.text_projection] if isinstance(self.text_projection, nn.Parameter) else [])
        )
        return [*self.backbone.parameters(), *extra, *proj]

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        if self.kind == "clip":
            self.backbone["transformer"].grad_checkpointing = enable
        else:
            self.backbone.set_grad_checkpointing(enable)
        return True

    def load(self, raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ShapeError(f"a caption must be a non-empty string, got {raw!r}")
        return raw

    def collate(self, items: Sequence[str]) -> Tensor:
        return self.tokenizer(list(items))

    def forward(self, ids: Tensor) -> TokenBatch:
        with self.backbone_grad_context():
            if self.kind == "clip":
                x, pooled = self._clip_forward(ids)
                x, pooled = _project(x, self.text_projection), _project(pooled, self.text_projection)
            else:  # the tower's own forward (its pooled output is projected), asked for its tokens too
                tower = self.backbone
                previous, tower.output_tokens = tower.output_tokens, True
                try:
                    pooled, x = tower(ids)
                finally:
                    tower.output_tokens = previous
                x = _project(x, tower.proj if self.kind == "hf" else tower.text_projection)
        return self._out(x, self.caption_mask(ids), pooled)

    def _clip_forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """CLIP.encode_text up to the projection, keeping every token's state."""
        from open_clip.transformer import text_global_pool

        b = self.backbone
        cast = b["transformer"].get_cast_dtype()
        x = b["token_embedding"](ids).to(cast) + self.positional_embedding.to(cast)
        x = b["ln_final"](b["transformer"](x, attn_mask=self.attn_mask))
        return x, text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)

    def caption_mask(self, ids: Tensor) -> Tensor:
        """The caption's real tokens. With causal attention the pooled token closes the caption: mask
        everything up to it; otherwise (SigLIP's last-token pool, HF towers) the non-padding ids."""
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        if self.pool_type == "eos" and self.eos_id is not None:
            return positions <= (ids == self.eos_id).int().argmax(dim=-1)[:, None]
        if self.pool_type == "argmax":  # OpenAI's tokenizer: end-of-text has the largest id
            return positions <= ids.argmax(dim=-1)[:, None]
        mask = ids != self.pad_id
        if self.kind == "hf" and type(self.backbone.pooler).__name__ == "ClsPooler":
            mask = mask[:, 1:]  # open_clip drops the CLS position from an HF tower's tokens
        mask[:, 0] |= ~mask.any(dim=1)  # never an item without a real token (all-padding caption)
        return mask
