"""The Consistent Multimodal Contrastive (CMC) loss, TGDT-style.

The defaults (`consistency: l2`, weight 0.1, `reduction: mean`) are finealign's form; TGDT's own
(`consistency: tgdt`, weight 1, `reduction: sum`, with two_stage `train_score: local`) is method=tgdt.

    L = global_weight      · H(S_global)               hinge on the global similarities
      + local_weight       · H(S)                      hinge on the aligner's (local) similarities
      + consistency_weight · C                         intra-modal consistency

H is the bidirectional hinge of `hinge_terms` (margin m, hardest negative or sum), averaged over
the batch's positive pairs. S_global comes from `extras["global_sim"]`, or is the cosine of
`extras["image_global"]` and `extras["text_global"]`.

C compares the similarity structure of the two modalities on the batch's captions. Caption b
belongs to image u(b) (its single positive). With ĝ the L2-normalised global vectors,
    S_tt[b, b'] = ĝ_text[b] · ĝ_text[b']          S_ii[b, b'] = ĝ_img[u(b)] · ĝ_img[u(b')]
    C = mean over b ≠ b' of |S_tt[b, b'] − S_ii[b, b']|^p     (p = 2 for "l2", 1 for "l1")
so two captions should be as similar as the images they describe (captions of one image: S_ii=1).
`consistency: tgdt` is TGDT's own term (models/loss.py, `ContrastiveLoss.forward`):
    C = Σ_b' [ max_b |S_tt[b, b'] − S_ii[b, b']| − consistency_margin ]₊      (margin 0.3)
the hinge on each column's largest gap, summed over columns. Gradients reach both modalities'
global vectors. `reduction` sums (TGDT, VSE++) or averages the hinge over positive pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from finealign.checks import check_choice, check_number
from finealign.errors import ShapeError
from finealign.kernels.normalize import l2_normalize
from finealign.losses.base import BatchShare, Loss, check_share, check_similarity, hinge_share, hinge_terms
from finealign.registry import LOSSES


@dataclass
class CMCConfig:
    margin: float = 0.2
    global_weight: float = 1.0
    local_weight: float = 1.0
    consistency_weight: float = 0.1
    consistency: str = "l2"  # l2 (squared gap) | l1 (absolute gap) | tgdt (hinge on each column's max gap)
    consistency_margin: float = 0.3  # the margin of consistency="tgdt"
    hardest: bool = True  # hardest negative (VSE++) or the sum over negatives
    reduction: str = "mean"  # mean | sum of the hinge terms over positive pairs (TGDT sums)

    def __post_init__(self) -> None:
        for key in ("margin", "global_weight", "local_weight", "consistency_weight", "consistency_margin"):
            check_number(key, getattr(self, key), low=0)
        check_choice("consistency", self.consistency, ("l1", "l2", "tgdt"))
        check_choice("reduction", self.reduction, ("mean", "sum"))


@LOSSES.register("cmc")
class CMCLoss(Loss[CMCConfig]):
    """CMC, TGDT-style: global + local hinge + intra-modal consistency (default L2 term; TGDT's own is method=tgdt)."""

    Config = CMCConfig

    def forward(self, sim: Tensor, positives: Tensor, extras: Mapping[str, Tensor] | None = None) -> Tensor:
        check_similarity(sim, positives)
        extras = extras or {}
        image_global, text_global = extras.get("image_global"), extras.get("text_global")
        global_sim = extras.get("global_sim")
        if global_sim is None:
            if image_global is None or text_global is None:
                raise ShapeError("cmc needs extras 'global_sim' or both 'image_global' and 'text_global'")
            global_sim = l2_normalize(image_global.float()) @ l2_normalize(text_global.float()).T
        check_similarity(global_sim, positives, "global_sim")
        cfg = self.config

        def hinge(scores: Tensor) -> Tensor:
            cost = hinge_terms(scores.float(), positives, cfg.margin, cfg.hardest)
            return cost.sum() if cfg.reduction == "sum" else cost.mean()

        loss = cfg.local_weight * hinge(sim) + cfg.global_weight * hinge(global_sim)
        if cfg.consistency_weight > 0:
            if image_global is None or text_global is None:
                raise ShapeError("cmc's consistency term needs extras 'image_global' and 'text_global'")
            loss = loss + cfg.consistency_weight * self.consistency(image_global, text_global, positives)
        return loss

    def share_loss(self, share: BatchShare) -> Tensor:
        """Both hinges as the share's rows' and columns' costs (over the whole batch's count of
        positive pairs when averaging) and the consistency terms of the share's captions: the
        global similarities and C need only the (B, d) global vectors, which every share holds."""
        check_share(share)
        cfg = self.config
        image_global, text_global = share.extras.get("image_global"), share.extras.get("text_global")
        global_sim = share.extras.get("global_sim")
        if global_sim is not None:
            check_similarity(global_sim, share.positives, "global_sim")
            g_i2t, g_t2i = global_sim[share.image_rows], global_sim[:, share.text_cols]
        elif image_global is None or text_global is None:
            raise ShapeError("cmc needs extras 'global_sim' or both 'image_global' and 'text_global'")
        else:
            v, t = l2_normalize(image_global.float()), l2_normalize(text_global.float())
            g_i2t, g_t2i = v[share.image_rows] @ t.T, v @ t[share.text_cols].T
            check_similarity(g_i2t, share.row_positives, "global_sim")

        def hinge(i2t: Tensor, t2i: Tensor) -> Tensor:
            cost = hinge_share(share, i2t.float(), t2i.float(), cfg.margin, cfg.hardest)
            return cost if cfg.reduction == "sum" else cost / share.positives.sum()

        loss = cfg.local_weight * hinge(share.i2t, share.t2i) + cfg.global_weight * hinge(g_i2t, g_t2i)
        if cfg.consistency_weight > 0:
            if image_global is None or text_global is None:
                raise ShapeError("cmc's consistency term needs extras 'image_global' and 'text_global'")
            consistency = self.consistency(image_global, text_global, share.positives, captions=share.text_cols)
            loss = loss + cfg.consistency_weight * consistency
        return loss

    def consistency(
        self, image_global: Tensor, text_global: Tensor, positives: Tensor, captions: Tensor | None = None
    ) -> Tensor:
        """C of the module docstring: gap between caption-caption and image-image similarities.
        `captions`: only the terms of these captions (rows b of the gap; "tgdt": the columns b',
        the same by symmetry), so that C over the whole batch is the sum over a split of its
        captions (a rank's share in distributed training)."""
        n_img, n_txt = positives.shape
        if image_global.shape[0] != n_img or text_global.shape[0] != n_txt:
            raise ShapeError(
                f"image_global {tuple(image_global.shape)} / text_global {tuple(text_global.shape)} "
                f"do not match positives {tuple(positives.shape)}"
            )
        per_caption = positives.sum(dim=0)
        if not bool((per_caption == 1).all()):
            raise ShapeError("cmc consistency needs exactly one positive image per caption (column)")
        owner = positives.float().argmax(dim=0)  # u(b)
        img = l2_normalize(image_global.float())[owner]
        txt = l2_normalize(text_global.float())
        rows = torch.arange(n_txt, device=txt.device) if captions is None else captions
        gap = txt[rows] @ txt.T - img[rows] @ img.T  # (rows, n_txt); the whole gap matrix is symmetric
        if self.config.consistency == "tgdt":
            return (gap.abs().amax(dim=1) - self.config.consistency_margin).clamp_min(0).sum()
        if n_txt < 2:
            return gap.new_zeros(())
        gap = gap[rows[:, None] != torch.arange(n_txt, device=gap.device)[None, :]]  # b' ≠ b
        terms = gap.abs() if self.config.consistency == "l1" else gap.pow(2)
        return terms.sum() / (n_txt * (n_txt - 1))  # the mean over all b ≠ b' of the batch
