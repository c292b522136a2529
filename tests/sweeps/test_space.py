"""Grid enumeration of a conditional space, overrides, the Pareto front against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import optuna

from finealign.sweeps.results import pareto_mask
from finealign.sweeps.space import grid_points, point_key, suggest, to_overrides
from finealign.sweeps.spec import SweepSpec


def conditional_spec(sampler="grid", n_trials=None):
    return SweepSpec.from_dict(
        {
            "study": "s",
            "sampler": sampler,
            "n_trials": n_trials,
            "objectives": ["rsum"],
            "choose": {
                "aligner": {
                    "hard": {},
                    "tokenflow": {
                        "aligner.epsilon": {"low": 0.01, "high": 0.5, "log": True, "grid": [0.05, 0.1]},
                        "aligner.iterations": {"low": 10, "high": 100, "step": 10, "grid": [20, 50]},
                    },
                    "two_stage": {"aligner.top_k": {"values": [5, 10]}},
                },
                "loss": {"infonce": {}, "triplet": {"loss.margin": {"values": [0.1, 0.2]}}},
            },
            "params": {"train.lr": {"values": [0.001]}},
        }
    )


def test_grid_points_multiply_conditional_params_only_within_their_option():
    points = grid_points(conditional_spec())
    # aligner branches: 1 + 2*2 + 2 = 7; loss branches: 1 + 2 = 3; lr: 1
    assert len(points) == 21
    assert len({point_key(p) for p in points}) == 21
    expected_aligner = [
        {"aligner": "hard"},
        *(
            {"aligner": "tokenflow", "aligner.epsilon": e, "aligner.iterations": i}
            for e, i in itertools.product([0.05, 0.1], [20, 50])
        ),
        *({"aligner": "two_stage", "aligner.top_k": k} for k in [5, 10]),
    ]
    expected_loss = [
        {"loss": "infonce"},
        {"loss": "triplet", "loss.margin": 0.1},
        {"loss": "triplet", "loss.margin": 0.2},
    ]
    expected = [{**a, **loss, "train.lr": 0.001} for a, loss in itertools.product(expected_aligner, expected_loss)]
    assert sorted(map(point_key, points)) == sorted(map(point_key, expected))
    for p in points:  # a param appears only with the option that owns it
        assert ("aligner.epsilon" in p) == (p["aligner"] == "tokenflow")
        assert ("loss.margin" in p) == (p["loss"] == "triplet")


def test_sampled_trials_respect_conditions_and_ranges():
    spec = conditional_spec("random", 40)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        point = suggest(trial, spec)
        seen.add(point["aligner"])
        assert set(point) - {"aligner", "loss", "train.lr"} == {
            *(("aligner.epsilon", "aligner.iterations") if point["aligner"] == "tokenflow" else ()),
            *(("aligner.top_k",) if point["aligner"] == "two_stage" else ()),
            *(("loss.margin",) if point["loss"] == "triplet" else ()),
        }
        if point["aligner"] == "tokenflow":
            assert 0.01 <= point["aligner.epsilon"] <= 0.5
            assert point["aligner.iterations"] % 10 == 0 and 10 <= point["aligner.iterations"] <= 100
        study.tell(trial, 0.0)
    assert seen == {"hard", "tokenflow", "two_stage"}


def test_to_overrides_round_trips_values():
    assert to_overrides({"aligner": "hard", "train.lr": 0.1 + 0.2, "x": True, "y": None, "k": 3}) == [
        "aligner=hard", f"train.lr={0.1 + 0.2!r}", "x=true", "y=null", "k=3",
    ]  # fmt: skip


def brute_force_front(values, directions):
    sign = np.array([1 if d == "minimize" else -1 for d in directions])
    costs = np.asarray(values) * sign
    front = []
    for _i, a in enumerate(costs):
        dominated = any(
            all(b[k] <= a[k] for k in range(len(a))) and any(b[k] < a[k] for k in range(len(a))) for b in costs
        )
        front.append(not dominated)
    return np.array(front)


def test_pareto_mask_matches_brute_force_including_ties():
    rng = np.random.default_rng(0)
    for _trial in range(30):
        n, k = rng.integers(1, 25), rng.integers(1, 4)
        values = rng.integers(0, 5, size=(n, k)).astype(float)  # small ints: many ties/duplicates
        directions = list(rng.choice(["maximize", "minimize"], size=k))
        np.testing.assert_array_equal(pareto_mask(values, directions), brute_force_front(values, directions))
    assert pareto_mask(np.array([[1.0, 5.0], [2.0, 5.0], [2.0, 9.0]]), ["maximize", "minimize"]).tolist() == [
        False,
        True,
        False,
    ]
