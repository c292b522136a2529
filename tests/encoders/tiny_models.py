"""Tiny offline models for tests: a 1-layer BERT folder with its own word-piece vocabulary."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "and", "dog", "cat", "beach", "red", "ball", "child", "runs", "sits", "grass", "water", "near", "."]


def make_tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # positional: `vocab_file` in transformers 4, `vocab` in 5 (which ignores a `vocab_file=` keyword:
    # every word would become [UNK])
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


#: tiny open_clip architectures (random init, ~2M parameters) registered under these names
TINY_CLIP = "finealign-tiny-clip"  # the CLIP class: ViT vision tower, CLIP text transformer
TINY_CUSTOM_TEXT = "finealign-tiny-customtext"  # CustomTextCLIP: timm ViT trunk, SigLIP-style text tower
TINY_HF_TEXT = "finealign-tiny-hftext"  # CustomTextCLIP with a Hugging Face (BERT) text tower


def register_tiny_openclip(folder: Path, bert_dir: Path | None = None) -> list[str]:
    """Write open_clip model configs for tiny architectures and register them with open_clip
    (`add_model_config`), so `model_name=finealign-tiny-clip` works like `ViT-B-32`, offline."""
    import json

    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    vit = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    configs = {
        TINY_CLIP: {"embed_dim": 24, "vision_cfg": vit, "text_cfg": text},
        # SigLIP's layout (ViT-B-16-SigLIP.json): a timm trunk with attention-pool ("map") and no
        # extra projection, a bidirectional text tower pooled at its last position
        TINY_CUSTOM_TEXT: {
            "embed_dim": 64,
            "custom_text": True,
            "vision_cfg": {
                "image_size": 160,
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": "none",
            },
            "text_cfg": {**text, "no_causal_mask": True, "pool_type": "last", "proj_bias": True},
        },  # fmt: skip
    }
    if bert_dir is not None:
        configs[TINY_HF_TEXT] = {
            "embed_dim": 24, "vision_cfg": vit,
            "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_pooler", "context_length": 12},
        }  # fmt: skip
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return list(configs)


def make_random_mobilenet(path: Path, seed: int = 0) -> Path:
    """A randomly initialised torchvision MobileNetV2 checkpoint (what `checkpoint_path=` loads),
    with non-trivial BatchNorm statistics so that eval-mode BatchNorm is not the identity."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
