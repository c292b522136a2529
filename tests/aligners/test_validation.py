"""The shared input contract (aligners/validation.py) and padding handling, for every aligner."""

import dataclasses

import pytest
import torch

from finealign.errors import ConfigError, ShapeError, UnknownNameError
from finealign.registry import ALIGNERS, create_aligner, list_aligners
from finealign.tokens import TokenBatch
from tests.conftest import random_batch

DIM = 8
ALL = list_aligners()


def build(name: str, **kwargs):
    """Any registered aligner; `dim` is passed to those whose Config requires it."""
    fields = {f.name for f in dataclasses.fields(ALIGNERS.get(name).Config)}
    if "dim" in fields:
        kwargs.setdefault("dim", DIM)
    return create_aligner(name, **kwargs)


def pair(gen, nv=3, nt=4, **kwargs):
    visual = random_batch(nv, 5, DIM, generator=gen, **kwargs)
    return visual, random_batch(nt, 4, DIM, generator=gen, **kwargs)


def replace(batch: TokenBatch, **changes) -> TokenBatch:
    return dataclasses.replace(batch, **changes)


def with_nan_in_real_token(batch: TokenBatch) -> TokenBatch:
    tokens = batch.tokens.clone()
    position = int(batch.mask[2].nonzero()[0])
    tokens[2, position, 0] = float("nan")
    return replace(batch, tokens=tokens)


def with_empty_item(batch: TokenBatch) -> TokenBatch:
    mask = batch.mask.clone()
    mask[1] = False
    return replace(batch, mask=mask)


# (what breaks the contract, how to break the visual batch, the message expected)
BAD_INPUTS = [
    ("token dim mismatch", lambda v: random_batch(len(v), 5, DIM + 1), "token dims differ: 9 vs 8"),
    ("rank-2 tokens", lambda v: replace(v, tokens=v.tokens[:, 0]), r"visual.tokens must be \(N, L, d\)"),
    ("integer tokens", lambda v: replace(v, tokens=v.tokens.long()), "must be floating point"),
    ("float mask", lambda v: replace(v, mask=v.mask.float()), "visual.mask must be a bool tensor"),
    ("mask shape", lambda v: replace(v, mask=v.mask[:, :-1]), r"visual.mask must be \(N, L\) = \(3, 5\)"),
    ("all-padding item", with_empty_item, r"visual: item\(s\) \[1\] have no real token"),
    ("NaN in a real token", with_nan_in_real_token, r"visual.tokens holds NaN or inf \(first at item 2\)"),
    ("pooled shape", lambda v: replace(v, pooled=v.pooled[:, :-1]), r"visual.pooled must be \(N, d\)"),
    ("NaN pooled", lambda v: replace(v, pooled=v.pooled * float("nan")), "visual.pooled holds NaN"),
    ("empty batch", lambda v: v[0:0], "visual is empty"),
    ("not a TokenBatch", lambda v: v.tokens, "expected a TokenBatch, got Tensor"),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("what,corrupt,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_shape_error_naming_the_problem(name, what, corrupt, message, gen):
    v, t = pair(gen)
    aligner = build(name)
    with pytest.raises(ShapeError, match=message):
        aligner(corrupt(v), t)
    if hasattr(aligner, "score_pairs"):
        with pytest.raises(ShapeError, match=message):
            aligner.score_pairs(corrupt(v), t, torch.tensor([[0, 0]]))


def poison_padding(batch: TokenBatch, value: float) -> TokenBatch:
    """The same real tokens, with `value` written into every padded position."""
    return replace(batch, tokens=batch.tokens.masked_fill(~batch.mask[..., None], value))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e30], ids=["nan", "inf", "huge"])
def test_padded_positions_never_influence_scores_or_gradients(name, value, gen):
    # Validation checks only real tokens, so NaN/inf in padding is allowed and must be ignored.
    v, t = pair(gen, nv=4, nt=5, dtype=torch.float64, min_len=2)
    assert not bool(v.mask.all()) and not bool(t.mask.all())  # there is padding to poison
    # global would otherwise use `pooled` and never read the tokens.
    aligner = build(name, **({"source": "mean"} if name == "global" else {})).double()
    clean = aligner(v, t)
    pv = replace(poison_padding(v, value), tokens=poison_padding(v, value).tokens.requires_grad_(True))
    pt = replace(poison_padding(t, value), tokens=poison_padding(t, value).tokens.requires_grad_(True))
    poisoned = aligner(pv, pt)
    torch.testing.assert_close(poisoned, clean, rtol=1e-12, atol=1e-12)
    poisoned.sum().backward()
    for batch in (pv, pt):
        grad = batch.tokens.grad
        assert bool(torch.isfinite(grad).all())
        assert bool((grad[~batch.mask] == 0).all())  # padding gets no gradient


@pytest.mark.parametrize("name", ALL)
def test_score_pairs_equal_matrix_entries(name, gen):
    v, t = pair(gen, nv=5, nt=6)
    aligner = build(name, chunk_pairs=3)
    pairs = torch.tensor([[0, 0], [4, 5], [2, 1], [2, 3], [1, 1], [3, 0], [0, 5]])
    matrix = aligner(v, t)
    torch.testing.assert_close(aligner.score_pairs(v, t, pairs), matrix[pairs[:, 0], pairs[:, 1]])
    torch.testing.assert_close(aligner.score_pairs(v, t[:5]), matrix[:, :5].diagonal())


@pytest.mark.parametrize("name", [n for n in ALL if n != "global"])
def test_explain_takes_exactly_one_pair(name, gen):
    v, t = pair(gen)
    with pytest.raises(ConfigError, match="one visual and one text item, got 3 and 1"):
        build(name).explain(v, t[0])


TYPOS = [("meanmax", "mean_max"), ("cross_atention", "cross_attention"), ("hrad", "hard")]


@pytest.mark.parametrize("typo,meant", TYPOS)
def test_unknown_aligner_names_suggest_close_matches(typo, meant):
    with pytest.raises(UnknownNameError, match=f"Did you mean .*'{meant}'"):
        create_aligner(typo)


def test_unknown_option_suggests_the_close_one():
    with pytest.raises(ConfigError, match="no option 'temprature'; did you mean 'temperature'"):
        create_aligner("hard", temprature=0.1)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("key,value", [("chunk_visual", 0), ("chunk_text", -1), ("chunk_visual", 2.0)])
def test_bad_chunk_sizes_are_config_errors(name, key, value):
    with pytest.raises(ConfigError, match=f"{key} must be a positive int"):
        build(name, **{key: value})


BAD_CONFIGS = [
    ("global", {"source": "cls"}, "source must be one of"),
    ("hard", {"pooling": "max"}, "pooling must be one of"),
    ("hard", {"temperature": 0.0}, "temperature must be a positive number"),
    ("hard", {"temperature": "0.1"}, "temperature must be a positive number"),
    ("hard", {"direction": "image"}, "direction must be one of"),
    ("weighted_mean_max", {"dim": 8, "direction": "image"}, "direction must be one of"),
    ("weighted_mean_max", {"dim": -1}, "dim must be a positive int"),
    ("cross_attention", {"lambda_softmax": -9.0}, "lambda_softmax must be a positive number"),
    ("cross_attention", {"scan_norm": "yes"}, "scan_norm must be true or false"),
    ("cross_attention", {"pooling": "sum"}, "pooling must be one of"),
    ("cross_attention", {"temperature": float("nan")}, "temperature must be a finite number"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_CONFIGS, ids=[f"{b[0]}-{b[1]}" for b in BAD_CONFIGS])
def test_bad_config_values_are_config_errors(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_aligner(name, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_matches_cpu(name, dtype, gen):
    v, t = pair(gen, nv=5, nt=7)
    aligner = build(name, chunk_visual=2, chunk_text=3)
    cpu = aligner(v, t)
    gpu = aligner.to("cuda", dtype)(v.to("cuda", dtype), t.to("cuda", dtype))
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(gpu.float().cpu(), cpu, atol=tol, rtol=tol)
