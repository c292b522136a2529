"""Fine-tuning controls: parameter groups with their own lr and weight decay (backbone, heads,
aligner, temperature), layer-wise lr decay, a backbone frozen for N epochs then trained, gradient
checkpointing switches."""

import pytest
import torch
from torch import nn

from finealign.config import TrainConfig
from finealign.encoders.common import BackboneEncoder
from finealign.engine.checkpoint import load_checkpoint
from finealign.engine.model import RetrievalModel
from finealign.engine.optim import apply_backbone_schedule, build_optimizer, enable_grad_checkpointing, layer_scales
from finealign.errors import ConfigError
from finealign.registry import create_aligner, create_encoder, create_loss


class Tower(BackboneEncoder):
    def __init__(self, frozen=False):
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.embed = nn.Linear(4, 4)
        self.backbone.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)
        self.set_frozen(frozen)


def model_and_loss():
    torch.manual_seed(0)
    return RetrievalModel(Tower(), Tower(), create_aligner("weighted_mean_max", dim=4)), create_loss("infonce")


def test_each_group_gets_its_lr_and_one_adam_step_moves_it_by_that_lr():
    model, loss = model_and_loss()
    cfg = TrainConfig(lr=1e-2, backbone_lr=1e-4, aligner_lr=1e-3, temperature_lr=5e-3, weight_decay=0.0)
    opt = build_optimizer(model, loss, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["heads"] == 1e-2 and lrs["backbone"] == 1e-4 and lrs["aligner_no_decay"] == 1e-3
    assert lrs["temperature_no_decay"] == 5e-3
    before = {name: p.detach().clone() for name, p in [*model.named_parameters(), *loss.named_parameters()]}
    for p in [*model.parameters(), *loss.parameters()]:
        p.grad = torch.randn_like(p)
    opt.step()  # Adam's first step moves every coordinate by ≈ its group's lr
    moved = {
        name: float((p.detach() - before[name]).abs().max())
        for name, p in [*model.named_parameters(), *loss.named_parameters()]
    }
    assert moved["vision.backbone.blocks.0.weight"] == pytest.approx(1e-4, rel=1e-3)
    assert moved["vision.head.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["log_scale"] == pytest.approx(5e-3, rel=1e-3)


def test_layer_decay_scales_blocks_by_depth_and_embeddings_most():
    model, _ = model_and_loss()
    named = [(n, p) for n, p in model.vision.named_parameters() if n.startswith("backbone")]
    scales = dict(zip([n for n, _ in named], layer_scales(named, 0.5), strict=True))
    assert scales["backbone.blocks.1.weight"] == 1.0 and scales["backbone.blocks.0.weight"] == 0.5
    assert scales["backbone.embed.weight"] == 0.25
    opt = build_optimizer(model, create_loss("infonce"), TrainConfig(backbone_lr=1e-4, layer_decay=0.5))
    assert {g["name"] for g in opt.param_groups} >= {"backbone", "backbone_x0.5", "backbone_x0.25"}


def test_backbone_frozen_for_the_first_epochs_then_trained():
    model, loss = model_and_loss()
    cfg = TrainConfig(backbone_lr=1e-4, unfreeze_backbone_epoch=2)
    opt = build_optimizer(model, loss, cfg)
    backbone = {id(p) for p in model.backbone_parameters()}
    assert backbone <= {id(p) for g in opt.param_groups for p in g["params"]}  # in the optimiser from the start
    assert apply_backbone_schedule(model, cfg, 0) is False
    assert not any(p.requires_grad for p in model.backbone_parameters()) and model.vision.frozen
    assert apply_backbone_schedule(model, cfg, 2) is True
    assert all(p.requires_grad for p in model.backbone_parameters()) and not model.vision.frozen
    assert apply_backbone_schedule(model, TrainConfig(), 0) is None


def test_bad_fine_tuning_values_are_named():
    with pytest.raises(ConfigError, match="layer_decay"):
        TrainConfig(layer_decay=0.0)
    with pytest.raises(ConfigError, match="unfreeze_backbone_epoch"):
        TrainConfig(freeze_backbone=True, unfreeze_backbone_epoch=2)
    with pytest.raises(ConfigError, match="aligner_lr"):
        TrainConfig(aligner_lr=float("inf"))


def test_grad_checkpointing_needs_a_switch():
    model, _ = model_and_loss()
    with pytest.raises(ConfigError, match="no switch"):
        enable_grad_checkpointing(model)


# ---- end to end through a real open_clip tower (a tiny registered architecture, random init) ----


@pytest.fixture(scope="module")
def clip_images(tmp_path_factory):
    pytest.importorskip("open_clip")
    from tests.data.fake_karpathy import make_fake_karpathy
    from tests.encoders.tiny_models import TINY_CLIP, register_tiny_openclip

    register_tiny_openclip(tmp_path_factory.mktemp("openclip_configs"))
    return TINY_CLIP, make_fake_karpathy(tmp_path_factory.mktemp("data") / "flickr8k")


def clip_overrides(name, root, out, *extra):
    tower = [f"model_name={name}", "pretrained=null", "freeze=false", "embed_dim=16"]
    return [
        "data=flickr8k", f"data.root={root}", "encoder=openclip_vit_b32", "encoder.embed_dim=16",
        *[f"encoder.{side}.{o}" for side in ("vision", "text") for o in tower],
        "aligner=mean_max", "loss=infonce", f"output_dir={out}", "device=cpu", "train.progress=false",
        "eval.progress=false", "train.num_workers=0", "train.epochs=1", "train.eval_every=0", "train.batch_size=64",
        "train.warmup_steps=0", "train.schedule=constant", "train.weight_decay=0", "train.grad_clip=0",
        "train.tensorboard=false", *extra,
    ]  # fmt: skip


def test_one_epoch_fine_tune_through_open_clip_moves_the_backbone_by_the_backbone_lr_only(
    clip_images, tmp_path, monkeypatch
):
    """One epoch = one AdamW step here (12 training captions, batch 64; no warm-up, decay or
    clipping): Adam's first step moves each coordinate that has a gradient by its group's lr, so
    every tensor of both towers moves by backbone_lr (its largest coordinate change), the heads by
    lr; with backbone_lr = 0 the towers stay exactly as they started."""
    from finealign.config import compose
    from finealign.engine import experiment

    name, root = clip_images
    built = []

    def build_and_remember(*args, **kwargs):
        model = build_model(*args, **kwargs)
        backbone = {id(p) for p in model.backbone_parameters()}
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        built.append((start, {n for n, p in model.named_parameters() if id(p) in backbone}))
        return model

    build_model = experiment.build_model
    monkeypatch.setattr(experiment, "build_model", build_and_remember)
    moves = {}
    for backbone_lr in (1e-4, 0.0):
        out = tmp_path / f"backbone_lr_{backbone_lr}"
        overrides = clip_overrides(name, root, out, "train.lr=1e-2", f"train.backbone_lr={backbone_lr}")
        result = experiment.run_experiment(compose(overrides=overrides))
        assert result["steps"] == 1 and result["epochs"] == 1 and result["rsum"] > 0
        start, backbone = built[-1]
        trained = load_checkpoint(out / "model.pt")["model"]
        moves[backbone_lr] = {n: float((trained[n] - start[n]).abs().max()) for n in start}, backbone
    moved, backbone = moves[1e-4]
    heads = {"vision.project.weight", "text.project.weight"}
    assert any(n.startswith("vision.backbone.") for n in backbone) and "text.text_projection" in backbone
    from finealign.encoders.openclip import _load

    towers = {n for n, _ in _load(name, None, None)[0].named_parameters()} - {"logit_scale"}
    assert len(backbone) == len(towers)  # every tensor of both towers, the text projection included
    for n in backbone:  # each by the backbone lr: not less (it trained), not more (not at the heads' lr)
        assert moved[n] == pytest.approx(1e-4, rel=1e-3), n
    for n in heads:
        assert moved[n] == pytest.approx(1e-2, rel=1e-3), n
    frozen_moved, _ = moves[0.0]
    assert max(frozen_moved[n] for n in backbone) == 0.0  # backbone_lr = 0: not a single weight changed
    for n in heads:
        assert frozen_moved[n] == pytest.approx(1e-2, rel=1e-3), n


@pytest.mark.parametrize("which", ["clip", "custom_text"])
def test_open_clip_towers_switch_on_grad_checkpointing_with_the_same_gradients(clip_images, which):
    from tests.encoders.tiny_models import TINY_CLIP, TINY_CUSTOM_TEXT

    name = {"clip": TINY_CLIP, "custom_text": TINY_CUSTOM_TEXT}[which]
    towers = [create_encoder(f"openclip_{side}", model_name=name, freeze=False) for side in ("vision", "text")]
    model = RetrievalModel(*towers, create_aligner("mean_max"))
    size = 160 if which == "custom_text" else 32
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = model.text.collate(["a dog on the grass", "a red ball"])

    def gradients():
        model.zero_grad()
        model.train()
        v, t = model.vision(images), model.text(ids)
        (model.aligner(v, t).sum() + v.pooled.sum() + t.pooled.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    enable_grad_checkpointing(model)
    flags = [m.grad_checkpointing for m in model.modules() if type(m).__name__ == "Transformer"]
    assert flags == [True] * (2 if which == "clip" else 1)  # open_clip's own transformers (vision, text)
    if which == "custom_text":
        assert model.vision.backbone.trunk.grad_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)
    # layer-wise decay reads open_clip's block names: embeddings lowest, the last block and norms at 1
    named = [(n, p) for n, p in model.vision.named_parameters() if n.startswith("backbone")]
    scales = dict(zip([n for n, _ in named], layer_scales(named, 0.5), strict=True))
    if which == "clip":
        assert scales["backbone.transformer.resblocks.1.attn.in_proj_weight"] == 1.0
        assert scales["backbone.transformer.resblocks.0.attn.in_proj_weight"] == 0.5
        assert scales["backbone.conv1.weight"] == scales["backbone.positional_embedding"] == 0.25
        assert scales["backbone.ln_post.weight"] == scales["backbone.proj"] == 1.0


def test_a_backbone_frozen_by_the_train_config_stays_in_eval_mode():
    """freeze_backbone / backbone_lr 0 freeze as `freeze: true` does: no gradients and eval mode,
    so BatchNorm statistics and dropout do not move features that are meant to be fixed."""
    for cfg in (TrainConfig(freeze_backbone=True), TrainConfig(backbone_lr=0.0)):
        model, loss = model_and_loss()
        build_optimizer(model, loss, cfg)
        model.train()
        assert model.vision.frozen and not model.vision.backbone.training and model.vision.head.training
        assert not any(p.requires_grad for p in model.backbone_parameters())


def test_layer_decay_counts_each_towers_depth_from_its_own_top_block():
    model, loss = model_and_loss()
    model.text.backbone.blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])  # deeper than vision's 2
    opt = build_optimizer(model, loss, TrainConfig(backbone_lr=1e-4, layer_decay=0.5))
    scale = {id(p): g["lr"] / 1e-4 for g in opt.param_groups if g["name"].startswith("backbone") for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["vision.backbone.blocks.1.weight"])] == scale[id(named["text.backbone.blocks.3.weight"])] == 1
    assert (
        scale[id(named["text.backbone.blocks.0.weight"])] == 0.125
        and scale[id(named["vision.backbone.embed.weight"])] == 0.25
    )


# ---- end to end through a staged cache: the tail of MobileNetV2 / a tiny BERT is the backbone ----


@pytest.fixture(scope="module")
def staged_data(tmp_path_factory):
    pytest.importorskip("torchvision")
    from tests.data.fake_karpathy import make_fake_karpathy
    from tests.encoders.tiny_models import make_random_mobilenet, make_tiny_bert

    return {
        "root": make_fake_karpathy(tmp_path_factory.mktemp("data") / "flickr8k"),
        "mobilenet": make_random_mobilenet(tmp_path_factory.mktemp("weights") / "mobilenet.pth"),
        "bert": make_tiny_bert(tmp_path_factory.mktemp("bert")),
        "cache": tmp_path_factory.mktemp("cache"),
    }


def staged_overrides(data, out, *extra):
    return [
        "data=flickr8k_staged", "encoder=cached_staged", f"data.dataset_options.root={data['root']}",
        f"data.cache_dir={data['cache']}", "data.batch_size=8", f"data.vision_options.checkpoint_path={data['mobilenet']}",
        "data.vision_options.image_size=64", "data.text=hf_text", f"data.text_options.model_name_or_path={data['bert']}",
        "data.text_options.pooling=mean", "encoder.embed_dim=16", "encoder.vision.dropout=0", "encoder.text.dropout=0",
        "aligner=mean_max", "loss=infonce", f"output_dir={out}", "device=cpu", "train.progress=false",
        "eval.progress=false", "train.num_workers=0", "train.epochs=1", "train.eval_every=0", "train.batch_size=64",
        "train.warmup_steps=0", "train.schedule=constant", "train.weight_decay=0", "train.grad_clip=0",
        "train.tensorboard=false", "train.lr=1e-2", *extra,
    ]  # fmt: skip


def test_one_epoch_on_a_staged_cache_trains_the_tail_at_the_backbone_lr(staged_data, tmp_path, monkeypatch):
    """One epoch = one AdamW step (10 training captions, batch 64): every weight of both tails moves
    by backbone_lr (BatchNorm statistics stay), the heads by lr; frozen, the tails do not move."""
    from finealign.config import compose
    from finealign.engine import experiment

    built = []

    def build_and_remember(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append(({n: t.detach().clone() for n, t in model.state_dict().items()}, model))
        return model

    build_model = experiment.build_model
    monkeypatch.setattr(experiment, "build_model", build_and_remember)
    moved = {}
    for name, extra in (("trained", ["train.backbone_lr=1e-4"]), ("frozen", ["train.freeze_backbone=true"])):
        out = tmp_path / name
        result = experiment.run_experiment(compose(overrides=staged_overrides(staged_data, out, *extra)))
        assert result["steps"] == 1 and result["rsum"] > 0
        start, model = built[-1]
        trained = load_checkpoint(out / "model.pt")["model"]
        moved[name] = {n: float((trained[n].float() - start[n].float()).abs().max()) for n in start}
        backbone = {n for n, p in model.named_parameters() if id(p) in {id(q) for q in model.backbone_parameters()}}
    assert {n.split(".")[2] for n in backbone} == {"blocks", "layer"}  # MobileNetV2 blocks 17-18, BERT layer 0
    assert any(n.startswith("vision.backbone.blocks.17.") for n in backbone)
    for n in backbone:
        assert moved["frozen"][n] == 0.0, n
        if n.endswith("attention.self.key.bias"):  # softmax ignores a per-query shift: its gradient is 0
            continue
        assert moved["trained"][n] == pytest.approx(1e-4, rel=1e-3), n
    stats = [n for n in moved["trained"] if n.endswith(("running_mean", "running_var"))]
    assert stats and all(moved["trained"][n] == 0.0 for n in stats)  # BatchNorm keeps its statistics
    for n in ("vision.proj.0.weight", "text.proj.3.weight"):
        assert moved["trained"][n] == pytest.approx(1e-2, rel=1e-3) and moved["frozen"][n] == pytest.approx(
            1e-2, rel=1e-3
        )


def test_staged_tails_follow_the_unfreeze_schedule_and_layer_decay(staged_data):
    from finealign.config import compose, validate
    from finealign.engine.model import build_model
    from finealign.registry import create_dataset

    spec = validate(compose(overrides=staged_overrides(staged_data, "unused")))
    model = build_model(spec, create_dataset(spec.data[0], **spec.data[1]).split("test").meta)
    cfg = TrainConfig(backbone_lr=1e-4, unfreeze_backbone_epoch=1, layer_decay=0.5)
    opt = build_optimizer(model, create_loss("infonce"), cfg)
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert (
        lr[id(named["vision.backbone.blocks.18.0.weight"])]
        == lr[id(named["text.backbone.layer.0.output.dense.weight"])]
        == 1e-4
    )
    assert lr[id(named["vision.backbone.blocks.17.conv.0.0.weight"])] == 5e-5
    assert apply_backbone_schedule(model, cfg, 0) is False and model.vision.frozen and model.text.frozen
    model.train()
    assert not model.vision.backbone.training and not any(p.requires_grad for p in model.backbone_parameters())
    assert apply_backbone_schedule(model, cfg, 1) is True and all(p.requires_grad for p in model.backbone_parameters())
