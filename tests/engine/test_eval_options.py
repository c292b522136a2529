"""`evaluate` takes the `EvalConfig` whole (issue 28): its options reach the scoring, and a bad
value is refused once, where the EvalConfig is built."""

import pytest
import torch

from finealign.config import EvalConfig, compose, validate
from finealign.engine.evaluate import evaluate
from finealign.engine.experiment import seed_everything
from finealign.engine.model import build_model
from finealign.errors import ConfigError
from finealign.registry import create_dataset


def test_evaluate_scores_as_its_eval_config_says():
    spec = validate(compose(overrides=["data=toy", "encoder=toy", "encoder.embed_dim=16", "data.num_test=12",
                                       "aligner=mean_max", "device=cpu"]))  # fmt: skip
    seed_everything(spec.seed)
    dataset = create_dataset(spec.data[0], **spec.data[1])
    model = build_model(spec, dataset.split("train").meta)
    split = dataset.split("test")
    options = EvalConfig(batch_size=5, chunk_items=3, max_items=8, coco_folds=2, fold_size=4, progress=False)
    ranks: dict = {}
    metrics = evaluate(model, split, options, device=torch.device("cpu"), measure_memory=False, ranks=ranks)
    assert metrics["num_items"] == 8 and "folds_rsum" in metrics and "score_peak_mem_mb" not in metrics
    assert len(ranks["i2t"]) == 8  # the capped gallery: 8 image queries
    whole = evaluate(model, split, EvalConfig(progress=False), device=torch.device("cpu"), measure_memory=False)
    assert whole["num_items"] == 12 and "folds_rsum" not in whole


@pytest.mark.parametrize("bad", [{"batch_size": True}, {"max_items": -1}, {"cost_repeats": 2}, {"progress": 1}])
def test_a_bad_eval_option_is_refused_where_the_config_is_built(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        EvalConfig(**bad)
