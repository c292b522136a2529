"""Method presets against literal ports of the originals.

Each preset (configs/method/NAME.yaml) is composed and validated like `finealign train method=NAME`;
its aligner and loss are then checked against a per-pair float64 loop written from the original
code (the file named in each preset's `method.source`) in the original's own conventions (DRL's
fixed-length zero padding and raw-token weight head; CHAN's -1 padding fill, equal to dropping
padding for cosines; TGDT's 0 fill, on full region sets), on random inputs with padded tokens, so a
preset that followed finealign's convention instead would fail. TokenFlow has no code: its test
checks finealign's reading (converged OT) against POT.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from finealign.config import compose, validate
from finealign.errors import ConfigError, UnknownNameError
from finealign.registry import create_aligner, create_loss
from finealign.tokens import TokenBatch
from tests.aligners.reference import real_tokens
from tests.conftest import random_batch

PRESETS = [
    "chan",
    "chan_lse",
    "chan_lse_sum",
    "tgdt",
    "tgdt_mean",
    "tokenflow",
    "drl_ti",
    "drl_wti",
    "scan",
    "clip_global",
]
DIM = 8


def preset(name: str, *overrides: str):
    """(aligner, loss, spec) of `finealign train method=NAME` with the toy data and encoders."""
    spec = validate(compose("config", [f"method={name}", *overrides]))
    aname, aoptions = spec.aligner
    if aname == "weighted_mean_max":
        aoptions = {**aoptions, "dim": DIM}
    return create_aligner(aname, **aoptions), create_loss(spec.loss[0], **spec.loss[1]), spec


def batches(gen, n_img=4, n_cap=5, full_visual=False):
    v = random_batch(n_img, 6, DIM, generator=gen, dtype=torch.float64, min_len=6 if full_visual else 2)
    t = random_batch(n_cap, 5, DIM, generator=gen, dtype=torch.float64, min_len=2)
    return v, t


def cos(x, y) -> float:
    return float(x @ y) / (float(x.norm()) * float(y.norm()))


def matrix(v, t, pair_score) -> torch.Tensor:
    return torch.tensor([[pair_score(i, j) for j in range(len(t))] for i in range(len(v))], dtype=torch.float64)


def vse_loss(scores: torch.Tensor, margin: float, max_violation: bool) -> float:
    """VSE++ `ContrastiveLoss.forward` (CHAN lib/loss.py, TGDT models/loss.py, SCAN model.py),
    literally: diagonal positives, both directions, summed over the batch."""
    n = scores.shape[0]
    total = 0.0
    for i in range(n):
        cost_s = [max(0.0, margin + float(scores[i, j]) - float(scores[i, i])) for j in range(n) if j != i]
        cost_im = [max(0.0, margin + float(scores[j, i]) - float(scores[i, i])) for j in range(n) if j != i]
        total += (max(cost_s) + max(cost_im)) if max_violation else (sum(cost_s) + sum(cost_im))
    return total


def test_every_preset_composes_and_names_itself():
    for name in PRESETS:
        _, _, spec = preset(name)
        assert spec.method == name


def test_print_config_shows_the_chan_settings(capsys):
    from finealign.cli.main import main

    assert main(["train", "--print-config", "method=chan"]) == 0
    out = capsys.readouterr().out
    for line in (
        "name: hard",
        "pooling: mean",
        "name: triplet",
        "margin: 0.05",
        "reduction: sum",
    ):
        assert line in out


def test_an_override_that_contradicts_the_preset_names_both():
    with pytest.raises(ConfigError, match=r"method=chan fixes aligner.name='hard'.*'mean_max'"):
        validate(compose("config", ["method=chan", "aligner=mean_max"]))
    with pytest.raises(ConfigError, match=r"aligner.pooling='mean'.*'lse_chan'"):
        validate(compose("config", ["method=chan", "aligner.pooling=lse_chan"]))
    with pytest.raises(ConfigError, match=r"method=chan_lse fixes aligner.pooling='lse_chan'.*'mean'"):
        validate(compose("config", ["method=chan_lse", "aligner.pooling=mean"]))
    with pytest.raises(ConfigError, match=r"loss.consistency='tgdt'"):
        validate(compose("config", ["method=tgdt", "loss.consistency=l2"]))
    # Tuning a number the preset does not fix is fine.
    assert validate(compose("config", ["method=chan", "loss.margin=0.1"])).loss[1]["margin"] == 0.1


def test_an_unknown_preset_lists_close_matches():
    with pytest.raises(UnknownNameError, match=r"'chann'.*Did you mean 'chan'"):
        compose("config", ["method=chann"])


# -- CHAN ------------------------------------------------------------------------------------


def chan_pair(v, t, i, j, pooling: str, beta=0.1) -> float:
    """VHACoding (each word's max cosine over regions, padding filled with -1), then MeanPooling
    (Σ over the real words / their count: the BERT recipe) or LSEPooling log Σ_w exp(s_w / β)
    (the GRU recipe), lib/coding.py."""
    regions, words = real_tokens(v, i), real_tokens(t, j)
    best = [max(float(w @ r) for r in regions) for w in words]
    if pooling == "mean":
        return sum(best) / len(best)
    return math.log(sum(math.exp(s / beta) for s in best))


@pytest.mark.parametrize(("name", "pooling"), [("chan", "mean"), ("chan_lse", "lse"), ("chan_lse_sum", "lse")])
def test_chan_score_and_loss_equal_the_original(gen, name, pooling):
    aligner, loss, spec = preset(name)
    assert spec.train.batch_size == (128 if name == "chan" else 384)  # BERT / GRU recipe
    v, t = batches(gen, 5, 5)
    got = aligner(v, t)
    ref = matrix(v, t, lambda i, j: chan_pair(v, t, i, j, pooling))
    torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-9)
    positives = torch.eye(5, dtype=torch.bool)
    for epoch, hardest in ((0, False), (1, True)):  # vse_mean_warmup_epochs = 1 (the _sum variant: never)
        loss.set_epoch(epoch)
        hardest = hardest and name != "chan_lse_sum"
        assert float(loss(ref, positives)) == pytest.approx(vse_loss(ref, 0.05, hardest), rel=1e-6)


# -- TGDT ------------------------------------------------------------------------------------


def tgdt_local(v, t, i, j, mean: bool = False) -> float:
    """AlignmentContrastiveLoss: padded pairs filled with 0, max over regions, sum over words, ×10
    (models/loss.py; its dropping of CLS/EOS tokens is the encoder's business here). `mean`: the
    tgdt_mean variant's mean over words instead."""
    regions, words = real_tokens(v, i), real_tokens(t, j)
    best = [max(float(w @ r) for r in regions) for w in words]
    return sum(best) / len(best) if mean else 10.0 * sum(best)


@pytest.mark.parametrize("name", ["tgdt", "tgdt_mean"])
def test_tgdt_scores_loss_and_two_stage_inference_equal_the_original(gen, name):
    aligner, loss, _ = preset(name, "aligner.top_k_i2t=2", "aligner.top_k_t2i=3")
    v, t = batches(gen, 6, 6, full_visual=True)  # BUTD images: every region real
    glob = matrix(v, t, lambda i, j: cos(v.pooled[i].double(), t.pooled[j].double()))
    local = matrix(v, t, lambda i, j: tgdt_local(v, t, i, j, mean=name == "tgdt_mean"))
    aligner.train()
    torch.testing.assert_close(aligner(v, t), local, atol=1e-9, rtol=1e-9)  # the local branch trains alone
    aligner.eval()
    for queries, k, dim in (("i2t", 2, 1), ("t2i", 3, 0)):
        got = aligner.query_scores(v, t, queries)
        for q in range(glob.shape[1 - dim]):
            row = (lambda x: x[q]) if dim == 1 else (lambda x: x[:, q])
            shortlist = row(glob).argsort(descending=True)[:k].tolist()
            expected = sorted(shortlist, key=lambda c: -float(row(glob)[c] + row(local)[c]))  # d_g + d_l
            assert row(got).argsort(descending=True)[:k].tolist() == expected
            torch.testing.assert_close(row(got)[expected], row(glob + local)[expected])

    # CMC: hinge(global) + hinge(local) (margin 0.2, max_violation, summed) + Σ_col [max_row |Stt − Sii| − 0.3]₊
    img = F.normalize(v.pooled.double(), dim=-1)
    txt = F.normalize(t.pooled.double(), dim=-1)
    s_ii, s_tt = img @ img.T, txt @ txt.T
    intra = sum(max(0.0, max(abs(float(s_tt[r, c] - s_ii[r, c])) for r in range(6)) - 0.3) for c in range(6))
    expected = vse_loss(glob, 0.2, True) + vse_loss(local, 0.2, True) + intra
    extras = {"image_global": v.pooled.double(), "text_global": t.pooled.double()}
    got = loss(local, torch.eye(6, dtype=torch.bool), extras)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert intra > 0, "the case must exercise the consistency hinge"


# -- TokenFlow -------------------------------------------------------------------------------


# TokenFlow has no official code: converged entropic OT between importance marginals is finealign's
# reading of the paper, so it is checked against POT. (The one public port, ppanzx/ConfuSAN
# itr/lib/aggr/tokenflow.py, weights tokens by a one-shot softmax without transport iterations and,
# as written, overwrites those weights: its score is Σ sim², NaN on padding; nothing to port.)


def tokenflow_pair(v, t, i, j, eps=0.05, tau=0.1) -> float:
    """Σ P·S with P the converged entropic OT plan (POT, to 1e-9) between importance marginals."""
    regions, words = real_tokens(v, i), real_tokens(t, j)
    sim = (regions @ words.T).numpy()
    v_glob = F.normalize(v.pooled[i].double(), dim=0)
    t_glob = F.normalize(t.pooled[j].double(), dim=0)
    a = torch.softmax(regions @ t_glob / tau, 0).numpy()
    b = torch.softmax(words @ v_glob / tau, 0).numpy()
    plan = ot.sinkhorn(a, b, 1 - sim, eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-10)
    return float((plan * sim).sum())


def test_tokenflow_is_converged_optimal_transport(gen):
    aligner, loss, _ = preset("tokenflow")
    v, t = batches(gen, 3, 4)
    got = aligner(v, t)
    ref = matrix(v, t, lambda i, j: tokenflow_pair(v, t, i, j))
    # Within the marginal tolerance 1e-3 (|S| ≤ 1, so the score error is at most that).
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)
    report = aligner.diagnostics()
    assert report["converged"] == 1.0 and report["marginal_error"] <= 1e-3


# -- DRL -------------------------------------------------------------------------------------
# Literal ports of foolwood/DRL tvr/models/modeling.py `wti_interaction` (commit 696c75c): every
# caption zero-padded to max_words slots and every video to max_frames slots (real tokens first,
# padded slots holding whatever the encoder emits there), tokens L2-normalised, the similarities
# multiplied by both masks, each token's max taken over ALL slots of the other side (a padded slot
# gives 0), t2v summed over the caption's slots / its real count, v2t over the video's / its count.

MAX_WORDS, MAX_FRAMES = 32, 12  # scripts/msrvtt.sh --max_words 32 --max_frames 12


def items_of_lengths(lengths: list[int], length: int, gen) -> TokenBatch:
    """Items with these real lengths at random positions, token norms spread over [0.5, 3.5] (so a
    head reading raw tokens sees something else than one reading unit vectors), junk padding."""
    n = len(lengths)
    scale = 0.5 + 3.0 * torch.rand(n, length, 1, generator=gen, dtype=torch.float64)
    tokens = scale * torch.randn(n, length, DIM, generator=gen, dtype=torch.float64)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, real in enumerate(lengths):
        mask[i, torch.randperm(length, generator=gen)[:real]] = True
    tokens = torch.where(
        mask[..., None], tokens, 40.0 + 10.0 * torch.rand(n, length, 1, generator=gen, dtype=torch.float64)
    )
    return TokenBatch(tokens, mask, torch.randn(n, DIM, generator=gen, dtype=torch.float64))


def drl_batches(gen) -> tuple[TokenBatch, TokenBatch]:
    """Videos with 12 frames (unpadded, as MSR-VTT's mostly are) and fewer; captions of 32 tokens
    (unpadded) and fewer: both sides have padded and unpadded items."""
    v = items_of_lengths([MAX_FRAMES, 7, MAX_FRAMES, 2], MAX_FRAMES, gen)
    t = items_of_lengths([MAX_WORDS, 5, 17, 3, MAX_WORDS], MAX_WORDS, gen)
    return v, t


def drl_slots(batch: TokenBatch, i: int, length: int) -> tuple[list[np.ndarray], list[float]]:
    """DRL's fixed-length input of item i: its real tokens first, then padded slots up to `length`
    (junk features, mask 0), as its dataloader builds them."""
    real = [x.numpy() for x in batch.tokens[i][batch.mask[i]]]
    junk = [x.numpy() for x in batch.tokens[i][~batch.mask[i]]]
    feats = (real + junk)[:length]
    return feats, [1.0] * len(real) + [0.0] * (length - len(real))


def drl_logits(t_feat, t_mask, v_feat, v_mask) -> list[list[float]]:
    """retrieve_logits[t][v] of one (caption, video) pair: cosine × text_mask × video_mask."""
    unit = [[x / np.linalg.norm(x) for x in side] for side in (t_feat, v_feat)]
    return [[float(a @ b) * tm * vm for b, vm in zip(unit[1], v_mask)] for a, tm in zip(unit[0], t_mask)]


def drl_ti_pair(v, t, i, j) -> float:
    (t_feat, t_mask), (v_feat, v_mask) = drl_slots(t, j, MAX_WORDS), drl_slots(v, i, MAX_FRAMES)
    logits = drl_logits(t_feat, t_mask, v_feat, v_mask)
    t2v = sum(max(row) for row in logits) / sum(t_mask)
    v2t = sum(max(row[k] for row in logits) for k in range(MAX_FRAMES)) / sum(v_mask)
    return 0.5 * (t2v + v2t)


def exact_masking_matrix(v, t) -> torch.Tensor:
    """finealign's own convention (padding masked exactly), for checking that the case tells them apart."""
    return create_aligner("mean_max", direction="both")(v, t)


def test_drl_ti_equals_the_original(gen):
    aligner, loss, spec = preset("drl_ti")
    v, t = drl_batches(gen)
    ref = matrix(v, t, lambda i, j: drl_ti_pair(v, t, i, j))
    torch.testing.assert_close(aligner(v, t), ref, atol=1e-9, rtol=0)
    # The case sees DRL's zero padding: finealign's exact masking scores it differently.
    assert float((exact_masking_matrix(v, t) - ref).abs().max()) > 1e-2
    # CLIP's CrossEn on logit_scale · sim, both directions averaged (modeling.py forward).
    square = (100.0 * ref[:, :4]).numpy()

    def cross_entropy(rows: np.ndarray) -> float:
        return float(np.mean([-(r[k] - np.log(np.exp(r - r.max()).sum()) - r.max()) for k, r in enumerate(rows)]))

    expected = 0.5 * (cross_entropy(square) + cross_entropy(square.T))
    assert float(loss(ref[:, :4], torch.eye(4, dtype=torch.bool)).detach()) == pytest.approx(expected, rel=1e-6)


def test_drl_presets_train_as_the_script():
    """scripts/msrvtt.sh + main.py: 5 epochs, batch 128, lr 1e-4 (CLIP × coef_lr 1e-3), weight decay
    0.2, 10 % warm-up then cosine, grad clip 1.0; CLIP's logit scale 100 trained at 1e-7."""
    for name in ("drl_ti", "drl_wti"):
        _, _, spec = preset(name)
        train = spec.train
        got = (train.epochs, train.batch_size, train.lr, train.backbone_lr, train.temperature_lr, train.weight_decay)
        assert got == (5, 128, 1e-4, 1e-7, 1e-7, 0.2), name
        assert (train.schedule, train.warmup_steps, train.warmup_fraction, train.grad_clip) == ("cosine", 0, 0.1, 1.0)
        assert spec.loss[1]["temperature"] == 0.01
        assert spec.aligner[1]["zero_pad_text"] == MAX_WORDS and spec.aligner[1]["zero_pad_visual"] == MAX_FRAMES


def preset_options(name: str) -> dict:
    """The aligner options a preset composes (weighted_mean_max's dim set to the toy DIM)."""
    spec = validate(compose("config", [f"method={name}"]))
    return {**spec.aligner[1], "dim": DIM}


def mlp_logit(mlp, x: np.ndarray) -> float:
    """wti_arch 2: Linear → ReLU → Linear, evaluated by hand."""
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in (mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias))
    hidden = np.maximum(w1 @ x + b1, 0.0)
    return float(w2[0] @ hidden + b2[0])


def masked_softmax_list(logits: list[float], mask: list[float]) -> list[float]:
    """softmax after masked_fill(-inf) on the padded slots."""
    top = max(x for x, m in zip(logits, mask) if m)
    exps = [math.exp(x - top) if m else 0.0 for x, m in zip(logits, mask)]
    return [e / sum(exps) for e in exps]


def drl_wti_pair(aligner, v, t, i, j) -> float:
    (t_feat, t_mask), (v_feat, v_mask) = drl_slots(t, j, MAX_WORDS), drl_slots(v, i, MAX_FRAMES)
    # The weight heads read the features before their L2 normalisation.
    text_weight = masked_softmax_list([mlp_logit(aligner.text_weight, x) for x in t_feat], t_mask)
    video_weight = masked_softmax_list([mlp_logit(aligner.visual_weight, x) for x in v_feat], v_mask)
    logits = drl_logits(t_feat, t_mask, v_feat, v_mask)
    t2v = sum(max(row) * a for row, a in zip(logits, text_weight))
    v2t = sum(max(row[k] for row in logits) * b for k, b in enumerate(video_weight))
    return 0.5 * (t2v + v2t)


def test_drl_wti_equals_the_original_with_its_mlp_head(gen):
    aligner, _, _ = preset("drl_wti")
    for mlp in (aligner.text_weight, aligner.visual_weight):
        assert isinstance(mlp[1], torch.nn.ReLU) and mlp[0].out_features == DIM
        assert 0.01 < float(mlp[0].weight.detach().std()) < 0.03  # N(0, 0.02)
    with torch.no_grad():  # a trained head: weights far from uniform, so what the head reads matters
        for p in aligner.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen))
    v, t = drl_batches(gen)
    ref = matrix(v, t, lambda i, j: drl_wti_pair(aligner, v, t, i, j))
    torch.testing.assert_close(aligner(v, t), ref, atol=1e-9, rtol=0)
    # The case sees both DRL differences: the head on raw tokens, and the zero padding.
    prepared_head = create_aligner("weighted_mean_max", **{**preset_options("drl_wti"), "weight_input": "prepared"})
    prepared_head.load_state_dict(aligner.state_dict())
    assert float((prepared_head(v, t) - ref).abs().max().detach()) > 1e-2
    exact = create_aligner(
        "weighted_mean_max", **{**preset_options("drl_wti"), "zero_pad_text": None, "zero_pad_visual": None}
    )
    exact.load_state_dict(aligner.state_dict())
    assert float((exact(v, t) - ref).abs().max().detach()) > 1e-2


# -- SCAN ------------------------------------------------------------------------------------


def scan_pair(v, t, i, j, lam=9.0, lam_lse=6.0) -> float:
    """xattn_score_t2i: cosines (regions × words), leaky-ReLU 0.1, l2norm over words per region,
    softmax over regions of λ·attn, each word's attended region vector, cos(word, attended),
    LogSumExp pooling (1/λ_lse)·log Σ exp(λ_lse · R)."""
    regions, words = real_tokens(v, i), real_tokens(t, j)
    attn = [[float(r @ w) for w in words] for r in regions]
    attn = [[x if x > 0 else 0.1 * x for x in row] for row in attn]
    attn = [[x / (math.sqrt(sum(y * y for y in row)) + 1e-8) for x in row] for row in attn]
    relevance = []
    for k, w in enumerate(words):
        logits = [lam * attn[r][k] for r in range(len(regions))]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        weights = [x / sum(weights) for x in weights]
        attended = sum(weights[r] * regions[r] for r in range(len(regions)))
        relevance.append(cos(w, attended))
    return math.log(sum(math.exp(lam_lse * x) for x in relevance)) / lam_lse


def test_scan_equals_the_original(gen):
    aligner, loss, _ = preset("scan")
    v, t = batches(gen, 4, 4)
    ref = matrix(v, t, lambda i, j: scan_pair(v, t, i, j))
    torch.testing.assert_close(aligner(v, t), ref, atol=1e-6, rtol=0)
    loss.set_epoch(0)  # max_violation from the first epoch
    assert float(loss(ref, torch.eye(4, dtype=torch.bool))) == pytest.approx(vse_loss(ref, 0.2, True), rel=1e-6)


# -- CLIP ------------------------------------------------------------------------------------


def test_clip_global_equals_clip_loss(gen):
    aligner, loss, _ = preset("clip_global")
    v, t = batches(gen, 4, 4)
    sim = aligner(v, t)
    ref = matrix(v, t, lambda i, j: cos(v.pooled[i].double(), t.pooled[j].double()))
    torch.testing.assert_close(sim, ref, atol=1e-9, rtol=0)
    logits = (ref / 0.07).numpy()

    def ce(rows: np.ndarray) -> float:
        return float(np.mean([-(r[k] - np.log(np.exp(r).sum())) for k, r in enumerate(rows)]))

    assert float(loss(ref, torch.eye(4, dtype=torch.bool))) == pytest.approx(
        0.5 * (ce(logits) + ce(logits.T)), rel=1e-5
    )


def test_a_bad_option_inside_a_preset_is_a_config_error():
    """The TGDT preset's local options are checked like any two_stage local aligner's."""
    with pytest.raises(ConfigError):
        validate(compose("config", ["method=tgdt", "aligner.local_options.word_pooling=max"]))
