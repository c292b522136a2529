import math

import pytest
import torch

from finealign.engine.batching import PairCollator, epoch_pairs
from finealign.engine.schedule import LRSchedule
from finealign.registry import create_dataset, create_encoder


@pytest.fixture
def split():
    return create_dataset("toy", num_train=10, captions_per_item=3, regions=4, words=3).split("train")


def test_caption_pairs_cover_every_caption_once_and_depend_only_on_seed_and_epoch(split):
    pairs = epoch_pairs(split, "captions", seed=3, epoch=0)
    assert sorted(pairs[:, 1].tolist()) == list(range(30))
    assert all(split.caption_item[c] == i for i, c in pairs.tolist())
    assert torch.equal(pairs, epoch_pairs(split, "captions", seed=3, epoch=0))
    assert not torch.equal(pairs, epoch_pairs(split, "captions", seed=3, epoch=1))


def test_image_pairs_take_each_image_once(split):
    pairs = epoch_pairs(split, "images", seed=0, epoch=2)
    assert sorted(pairs[:, 0].tolist()) == list(range(10))
    assert all(split.caption_item[c] == i for i, c in pairs.tolist())
    drawn = {tuple(epoch_pairs(split, "images", seed=0, epoch=e)[:, 1].sort().values.tolist()) for e in range(4)}
    assert len(drawn) > 1  # a different caption per image across epochs


def test_collator_deduplicates_images_and_marks_every_positive(split):
    vision = create_encoder("precomputed", in_dim=32, embed_dim=8)
    text = create_encoder("precomputed", in_dim=24, embed_dim=8, modality="text")
    chosen = [(0, 0), (1, 3), (0, 2), (2, 6), (1, 4)]  # image 0 twice, image 1 twice
    samples = [(i, c, vision.load(split.raw_item(i)), text.load(split.captions[c])) for i, c in chosen]
    batch = PairCollator(vision, text)(samples)
    assert batch.item_ids.tolist() == [0, 1, 2]
    assert batch.images["tokens"].shape[0] == 3 and batch.texts["tokens"].shape[0] == 5
    expected = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(batch.positives, expected)


def test_schedule_warmup_cosine_and_step():
    cos = LRSchedule(total_steps=110, warmup_steps=10, kind="cosine", min_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos(110) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    step = LRSchedule(total_steps=100, kind="step", steps_per_epoch=5, step_epochs=2, gamma=0.5)
    assert [step(s) for s in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert LRSchedule(total_steps=10, kind="constant")(7) == 1.0
    assert math.isclose(LRSchedule(total_steps=10, warmup_steps=4, kind="constant")(1), 0.5)


def test_gallery_scoring_scores_gallery_dependent_aligners_per_direction(gen):
    from finealign.engine.evaluate import gallery_dependent, score_gallery
    from finealign.registry import create_aligner
    from tests.conftest import random_batch

    visual, text = random_batch(13, 5, 8, generator=gen), random_batch(29, 4, 8, generator=gen)
    two_stage = create_aligner("two_stage", top_k=3)
    assert gallery_dependent(two_stage)  # each caption's shortlist spans all images
    scores = score_gallery(two_stage, visual, text, chunk_items=4)
    torch.testing.assert_close(scores.i2t, two_stage.query_scores(visual, text, "i2t"))
    torch.testing.assert_close(scores.t2i, two_stage.query_scores(visual, text, "t2i"))
    assert not torch.equal(scores.i2t, scores.t2i)
    for name in ("mean_max", "hard", "tokenflow"):
        aligner = create_aligner(name)
        assert not gallery_dependent(aligner)
        scores = score_gallery(aligner, visual, text, chunk_items=4)
        assert scores.i2t is scores.t2i
        torch.testing.assert_close(scores.i2t, aligner(visual, text), atol=1e-5, rtol=1e-5)


def test_optimizer_gives_backbones_their_own_lr_and_freezes_them_on_request():
    from torch import nn

    from finealign.config import TrainConfig
    from finealign.encoders.base import Encoder
    from finealign.engine.model import RetrievalModel
    from finealign.engine.optim import build_optimizer
    from finealign.registry import create_aligner, create_loss

    class WithBackbone(Encoder):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def backbone_parameters(self):
            return list(self.backbone.parameters())

    model = RetrievalModel(WithBackbone(), WithBackbone(), create_aligner("mean_max"))
    loss = create_loss("infonce", learnable=True)
    opt = build_optimizer(model, loss, TrainConfig(lr=1e-3, backbone_lr=1e-5, weight_decay=0.1))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["backbone"]["lr"] == 1e-5 and by_name["heads"]["lr"] == 1e-3
    assert {id(p) for p in by_name["backbone"]["params"]} == {
        id(model.vision.backbone.weight),
        id(model.text.backbone.weight),
    }
    assert any(p is loss.log_scale for p in by_name["temperature_no_decay"]["params"])  # the temperature, no decay
    assert by_name["temperature_no_decay"]["weight_decay"] == 0.0
    frozen = RetrievalModel(WithBackbone(), WithBackbone(), create_aligner("mean_max"))
    opt = build_optimizer(frozen, loss, TrainConfig(freeze_backbone=True))
    assert {g["name"] for g in opt.param_groups} == {"heads", "heads_no_decay", "temperature_no_decay"}
    assert not frozen.vision.backbone.weight.requires_grad
