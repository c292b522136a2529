"""TokenFlow: optimal-transport flow between visual and text tokens.

The paper (arXiv 2209.13822) has no official code; the converged OT plan below is finealign's
reading of it. (The one public port, ppanzx/ConfuSAN, uses a one-shot softmax flow and is broken:
its weights are overwritten, so the score becomes Σ sim², and padding gives NaN.)

For one (image, caption) pair with token similarities S (Lv × Lt, cosines when `normalize`):

* Marginals. `importance`: a region's mass is softmax over the image's real regions of
  sim(region, caption's global vector) / τ, and a word's mass is softmax over the caption's real
  words of sim(word, image's global vector) / τ (τ = `marginal_temperature`; the global vector is
  `pooled`, or the masked token mean when an encoder gives none). `uniform`: 1/Lv and 1/Lt.
  Padded tokens get exactly zero mass.
* Cost C = 1 − S. (−S gives the same plan: adding a constant to the cost only rescales the Gibbs
  kernel, which the Sinkhorn scalings absorb, because both marginals sum to 1.)
* Flow P = the entropic OT plan (Sinkhorn, `epsilon`; see kernels/sinkhorn.py; converged plans by
  sweeps + Newton steps, kernels/sinkhorn_newton.py), and the pair's score is Σ P ⊙ S. Iterations stop when every pair's region marginal is within `tolerance` (L1), with
  `iterations` as the cap. A plan stopped by the cap is not optimal transport: the aligner
  records the largest marginal error it reached (`diagnostics()`), the engine stores it with
  every evaluation and warns, and tables name such a row "tokenflow (N it., marginal err E)".

Subsumption of token-wise aggregation (`relax_visual=True`). Enforce only the word marginal b
and leave the region marginal free (one-sided OT):

    min_P  Σ_ij P_ij C_ij + ε Σ_ij P_ij (log P_ij − 1)   s.t.  Σ_i P_ij = b_j.

The problem separates over words j; the Lagrangian stationarity condition C_ij + ε log P_ij = λ_j
gives P_ij = b_j · softmax_i(−C_ij/ε) = b_j · softmax_i(S_ij/ε) over the real regions. Hence

    score = Σ_j b_j Σ_i softmax_i(S_ij/ε) S_ij  →  Σ_j b_j max_i S_ij     as ε → 0,

(the gap is at most ε·log Lv), which for uniform b_j = 1/Lt is exactly `mean_max`: each word's
mass flows to its best region. With `importance` marginals it is an importance-weighted
mean-max; with both marginals enforced, regions can no longer be shared by every word for free,
which is the extra structure TokenFlow adds over token-wise max.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from finealign.aligners.base import (
    TokenAlignment,
    global_vectors,
    masked_fill_pairs,
    paired_token_similarities,
    token_similarities,
)
from finealign.aligners.kernel_backed import KernelAligner, KernelConfig
from finealign.checks import check_positive_int
from finealign.errors import ConfigError
from finealign.kernels import SinkhornOptions, sinkhorn_flow_scores
from finealign.kernels.checks import check_sinkhorn_kernel_options
from finealign.kernels.sinkhorn import DOMAINS, SinkhornResult, sinkhorn
from finealign.kernels.sinkhorn_implicit import converged_flow_scores, implicit_sinkhorn
from finealign.kernels.sinkhorn_newton import SolveReport, converged_scalings
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch

MARGINALS = ("importance", "uniform")
GRADIENTS = ("auto", "implicit", "unrolled")
ACCELERATIONS = ("newton", "none")


@dataclass
class TokenFlowConfig(KernelConfig):
    # Smaller blocks than the base default: a block holds nv·nt OT problems, and autograd keeps
    # every Sinkhorn iterate of them.
    chunk_visual: int = 16
    chunk_text: int = 64
    epsilon: float = 0.05  # entropic regularisation ε (smaller = sharper flow, more iterations)
    iterations: int = 1000  # the cap on Sinkhorn iterations (unrolled, so gradients flow through them)
    # stop once every pair's region marginal is within this L1 error (0: always run `iterations`,
    # and claim no convergence)
    tolerance: float = 1e-3
    # the torch solver's domain for plain Sinkhorn iterates (acceleration "none", fixed iterations,
    # unrolled gradients): "scaling" (kernel formed once, matrix-vector products) or "log"
    # (log-sum-exps every iteration); same iterates, scaling is ~20x faster on CPU
    solver_domain: str = "scaling"
    marginals: str = "importance"  # "importance" or "uniform"
    marginal_temperature: float = 0.1  # τ of the importance softmax
    relax_visual: bool = False  # enforce only the word marginal (one-sided OT; → mean_max as ε → 0)
    # backend "auto" runs the fused Triton Sinkhorn for CUDA tensors (training too: its backward
    # kernel reverses the saved iterates), the unrolled torch solver elsewhere. kernel_domain: how
    # the kernel iterates at inference, "log" (log-sum-exps) or "scaling" (multiply-adds, same scores).
    kernel_domain: str = "log"
    # Torch solver in training: recompute each block's Sinkhorn in the backward pass instead of
    # keeping all its iterates (memory O(block), not O(batch pairs × iterations); one more forward).
    # Only the unrolled gradient keeps iterates; the implicit one needs no checkpointing.
    checkpoint: bool = True
    # How the plan is differentiated (torch solver): "implicit" solves the optimality conditions
    # once per pair (sinkhorn_implicit.py: no iterates kept, backward ≈ one small solve), "unrolled"
    # backpropagates through every iteration; "auto" = implicit for a converged two-sided plan
    # (tolerance > 0), unrolled for fixed iterations (a truncated plan is no optimum to differentiate)
    # and for one-sided OT (a closed form).
    gradient: str = "auto"
    # How a converged plan that is differentiated implicitly (or not at all) is solved: "newton"
    # (Sinkhorn sweeps, then Newton steps on the pairs that converge slowly; kernels/sinkhorn_newton.py)
    # or "none" (plain Sinkhorn iterates in `solver_domain`, the solver before 2026-12-03). Both stop
    # at `tolerance`; plans differ by O(tolerance). Unrolled gradients always use plain iterates.
    acceleration: str = "newton"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sinkhorn_kernel_options(self.kernel_domain)
        for key in ("epsilon", "marginal_temperature"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{key} must be a positive finite number, got {value!r}")
        check_positive_int("iterations", self.iterations)
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"tolerance must be a finite number >= 0, got {tol!r}")
        if self.backend == "triton" and tol > 0:
            raise ConfigError(
                f"backend='triton' runs exactly `iterations` and cannot stop at tolerance={tol!r}; "
                "set tolerance=0 (fixed iterations) or backend='auto'/'torch'"
            )
        if self.solver_domain not in DOMAINS:
            raise ConfigError(f"solver_domain must be one of {DOMAINS}, got {self.solver_domain!r}")
        if self.marginals not in MARGINALS:
            raise ConfigError(f"marginals must be one of {MARGINALS}, got {self.marginals!r}")
        if self.gradient not in GRADIENTS:
            raise ConfigError(f"gradient must be one of {GRADIENTS}, got {self.gradient!r}")
        if self.acceleration not in ACCELERATIONS:
            raise ConfigError(f"acceleration must be one of {ACCELERATIONS}, got {self.acceleration!r}")
        if self.gradient == "implicit" and (self.tolerance == 0 or self.relax_visual):
            raise ConfigError(
                "gradient='implicit' differentiates a converged two-sided plan: it needs tolerance > 0 and "
                "relax_visual=false (use 'auto' or 'unrolled')"
            )
        for key in ("relax_visual", "checkpoint"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be a bool, got {getattr(self, key)!r}")


@ALIGNERS.register("tokenflow")
class TokenFlowAligner(KernelAligner[TokenFlowConfig]):
    """Optimal-transport flow between visual and text tokens; score = Σ flow · similarity (TokenFlow, converged OT: finealign's reading)."""

    Config = TokenFlowConfig

    def __init__(self, config: TokenFlowConfig | None = None):
        super().__init__(config)
        self.reset_diagnostics()

    def _kernel_applies(self, visual: TokenBatch, text: TokenBatch, has_backward: bool) -> bool:
        # The fused kernel runs exactly `iterations` and cannot stop at a tolerance: it scores only
        # with tolerance 0 (fixed iterations), so both backends always give the same scores.
        if self.config.tolerance > 0:
            return False
        return super()._kernel_applies(visual, text, has_backward)

    # -- convergence record -------------------------------------------------------------------
    def reset_diagnostics(self) -> None:
        self._record = {"marginal_error": 0.0, "iterations": 0, "blocks": 0, "fallback": 0, "fused": 0}

    def diagnostics(self) -> dict[str, float]:
        """What the solver reached since the last reset: the largest region-marginal L1 error of
        any pair, the most iterations any block ran, and whether every block met `tolerance`
        (converged 1/0; NaN when a fused Triton kernel scored, which runs `iterations` exactly
        and does not measure the error)."""
        rec = self._record
        if not rec["blocks"] and not rec["fused"]:
            return {}
        if rec["fused"]:
            return {"marginal_error": math.nan, "iterations": float(self.config.iterations), "converged": math.nan}
        converged = self.config.tolerance > 0 and rec["marginal_error"] <= self.config.tolerance
        return {
            "marginal_error": float(rec["marginal_error"]),
            "iterations": float(rec["iterations"]),
            "converged": float(converged),
            "log_fallback_pairs": float(rec["fallback"]),
        }

    def _note(self, result: SinkhornResult | SolveReport) -> None:
        rec = self._record
        rec["marginal_error"] = max(rec["marginal_error"], result.marginal_error)
        rec["iterations"] = max(rec["iterations"], result.iterations)
        rec["blocks"] += 1
        rec["fallback"] += result.fallback

    def prepare(self, batch: TokenBatch) -> TokenBatch:
        # Fill the global vector (masked mean) before normalising, so importance always has one.
        return super().prepare(TokenBatch(batch.tokens, batch.mask, global_vectors(batch)))

    # -- scoring ------------------------------------------------------------------------------
    def kernel_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None) -> Tensor:
        cfg = self.config
        importance = cfg.marginals == "importance"
        options = SinkhornOptions(epsilon=cfg.epsilon, iterations=cfg.iterations, one_sided=cfg.relax_visual,
                                  backend="triton", domain=cfg.kernel_domain,
                                  marginal_temperature=cfg.marginal_temperature)  # fmt: skip
        self._record["fused"] += 1
        return sinkhorn_flow_scores(
            visual.tokens,
            visual.mask,
            text.tokens,
            text.mask,
            pairs=pairs,
            options=options,
            visual_pooled=visual.pooled if importance else None,
            text_pooled=text.pooled if importance else None,
        )

    @property
    def implicit_gradient(self) -> bool:
        cfg = self.config
        if cfg.gradient == "auto":
            return cfg.tolerance > 0 and not cfg.relax_visual
        return cfg.gradient == "implicit"

    @property
    def newton_solver(self) -> bool:
        """Whether plans are solved by sweeps + Newton (converged, implicitly differentiated plans)."""
        return self.config.acceleration == "newton" and self.implicit_gradient

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        tensors = (visual.tokens, visual.pooled, text.tokens, text.pooled)
        needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
        if self.config.checkpoint and needs_grad and not self.implicit_gradient:
            return checkpoint(self._checkpointed_block, *tensors, visual.mask, text.mask, use_reentrant=False)
        return self._block_scores(visual, text)

    def _checkpointed_block(self, v, v_pooled, t, t_pooled, vmask, tmask) -> Tensor:
        return self._block_scores(TokenBatch(v, vmask, v_pooled), TokenBatch(t, tmask, t_pooled))

    def _block_scores(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        if self.newton_solver:
            return self._newton_block_scores(visual, text)
        nv, nt = len(visual), len(text)
        lv, lt = visual.tokens.shape[1], text.tokens.shape[1]
        # Padded pairs read 0: their flow is 0, and a 0 cannot turn 0·x into NaN.
        sim = masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, 0.0).reshape(nv * nt, lv, lt)
        # Region importance w.r.t. each caption's global vector, word importance w.r.t. each image's.
        region_imp = torch.einsum("ikd,jd->ijk", visual.tokens, text.pooled).reshape(nv * nt, lv)
        word_imp = torch.einsum("jld,id->ijl", text.tokens, visual.pooled).reshape(nv * nt, lt)
        vmask = visual.mask[:, None, :].expand(nv, nt, lv).reshape(nv * nt, lv)
        tmask = text.mask[None, :, :].expand(nv, nt, lt).reshape(nv * nt, lt)
        return self._scores(sim, region_imp, word_imp, vmask, tmask).reshape(nv, nt)

    def prepare_block(self, block: TokenBatch) -> TokenBatch | FlowCaptions:
        # The Newton solver's packed word layout depends on the captions alone: made once per gallery.
        if not self.newton_solver:
            return block
        return FlowCaptions.of(block)

    def score_prepared_block(self, visual: TokenBatch, block: TokenBatch | FlowCaptions) -> Tensor:
        if isinstance(block, FlowCaptions):
            return self._newton_block_scores(visual, block.batch, block)
        return self.score_block(visual, block)

    def _newton_block_scores(self, visual: TokenBatch, text: TokenBatch, packing: FlowCaptions | None = None) -> Tensor:
        """`_block_scores` for the Newton solver: the same scores from less work. Each caption's real
        words are packed into a prefix (the order of a caption's words does not change its flow), so
        the product multiplies real words only; the regions are divided by ε first, so the product
        is S/ε, the kernel's exponent; and it comes out (image, caption, word, region) — each pair's
        words × regions block contiguous, the layout the solver builds its kernel in. `packing`:
        the captions' layout when already made (a prepared gallery)."""
        cfg = self.config
        nv, nt, lv = len(visual), len(text), visual.tokens.shape[1]
        if not nv or not nt:
            return visual.tokens.new_zeros(nv, nt)
        packing = FlowCaptions.of(text) if packing is None else packing
        words, slots, word_mask, free, width = (
            packing.words,
            packing.slots,
            packing.word_mask,
            packing.free,
            packing.width,
        )
        # One flat product (its shape keeps BLAS efficient), then each word scattered to its slot.
        regions = (visual.tokens * (1.0 / cfg.epsilon)).reshape(nv * lv, -1)
        packed = (words @ regions.T).view(len(words), nv, lv).transpose(0, 1)  # (nv, R, lv)
        exponent = packed.new_empty(nv, nt * width, lv).index_copy_(1, slots, packed).index_fill_(1, free, 0.0)
        exponent = exponent.view(nv * nt, width, lv)
        with torch.no_grad():  # |S/ε| ≤ the longest region times the longest word, over ε
            bound = float(regions.norm(dim=1).amax() * packing.longest_word) if len(words) else 0.0
        word_imp = (words @ global_vectors(visual).T).T  # (nv, R): word · image global vector
        word_imp = word_imp.new_zeros(nv, nt * width).index_copy(1, slots, word_imp).view(nv * nt, width)
        region_imp = torch.einsum("ikd,jd->ijk", visual.tokens, text.pooled).reshape(nv * nt, lv)
        vmask = visual.mask[:, None, :].expand(nv, nt, lv).reshape(nv * nt, lv)
        tmask = word_mask[None, :, :].expand(nv, nt, width).reshape(nv * nt, width)
        dtype = torch.promote_types(exponent.dtype, torch.float32)
        log_a, log_b = self._log_marginals(region_imp.to(dtype), word_imp.to(dtype), vmask, tmask)
        # ε = 1 for the exponent S/ε: the same plan; its score Σ P·S/ε times ε is Σ P·S.
        scores, report = converged_flow_scores(exponent.to(dtype).transpose(1, 2), log_a, log_b, vmask, tmask, 1.0,
                                               cfg.iterations, cfg.tolerance, bound)  # fmt: skip
        self._note(report)
        return (cfg.epsilon * scores).to(visual.tokens.dtype).reshape(nv, nt)

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        # Paired form: c OT problems instead of the c × c block.
        return self._scores(*self._paired_problem(visual, text), visual.mask, text.mask)

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        visual, text = self.prepare_pair(visual, text)
        flow, sim = self._paired_flow(visual, text)
        score = self._score(flow, sim)[0]
        weights = flow[0][visual.mask[0]][:, text.mask[0]].T  # (real words, real regions)
        return TokenAlignment(weights=weights, word_to_region=weights.argmax(dim=1), score=float(score))

    # -- the method ---------------------------------------------------------------------------
    def _paired_problem(self, visual: TokenBatch, text: TokenBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(similarities (c, Lv, Lt), region importance (c, Lv), word importance (c, Lt)) of item p with item p."""
        sim = paired_token_similarities(visual, text, 0.0)
        region_imp = torch.einsum("pkd,pd->pk", visual.tokens, text.pooled)
        word_imp = torch.einsum("pld,pd->pl", text.tokens, visual.pooled)
        return sim, region_imp, word_imp

    def _paired_flow(self, visual: TokenBatch, text: TokenBatch) -> tuple[Tensor, Tensor]:
        """(flow, similarities), each (c, Lv, Lt), of item p with item p."""
        sim, region_imp, word_imp = self._paired_problem(visual, text)
        return self._flow(sim, region_imp, word_imp, visual.mask, text.mask), sim

    def _scores(self, sim: Tensor, region_imp: Tensor, word_imp: Tensor, vmask: Tensor, tmask: Tensor) -> Tensor:
        """(B,) Σ flow · sim for B pairs (sim 0 on padded pairs), in the input dtype."""
        if not self.newton_solver:
            return self._score(self._flow(sim, region_imp, word_imp, vmask, tmask), sim)
        dtype = torch.promote_types(sim.dtype, torch.float32)
        log_a, log_b = self._log_marginals(region_imp.to(dtype), word_imp.to(dtype), vmask, tmask)
        cfg = self.config
        scores, report = converged_flow_scores(sim.to(dtype), log_a, log_b, vmask, tmask, cfg.epsilon, cfg.iterations,
                                               cfg.tolerance)  # fmt: skip
        self._note(report)
        return scores.to(sim.dtype)

    def _log_marginals(
        self, region_imp: Tensor, word_imp: Tensor, vmask: Tensor, tmask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(log region masses, log word masses) of B pairs (see `_log_marginal`)."""
        return self._log_marginal(region_imp, vmask), self._log_marginal(word_imp, tmask)

    def _flow(self, sim: Tensor, region_imp: Tensor, word_imp: Tensor, vmask: Tensor, tmask: Tensor) -> Tensor:
        """(B, Lv, Lt) flow for B pairs, computed in at least fp32 (half precision cannot hold exp(S/ε)).
        With the Newton solver the flow carries no gradient (`_scores` differentiates the score)."""
        dtype = torch.promote_types(sim.dtype, torch.float32)
        cfg = self.config
        if self.newton_solver:
            rows, cols = self._log_marginals(region_imp.to(dtype), word_imp.to(dtype), vmask, tmask)
            solved = converged_scalings(sim.to(dtype), rows, cols, vmask, tmask, cfg.epsilon, cfg.iterations,
                                        cfg.tolerance)  # fmt: skip
            self._note(solved.report)
            return solved.plan()
        log_b = self._log_marginal(word_imp.to(dtype), tmask)
        log_a = None if cfg.relax_visual else self._log_marginal(region_imp.to(dtype), vmask)
        # implicit_sinkhorn needs log_a: TokenFlowConfig allows it only two-sided (relax_visual=false).
        solve: Callable[..., SinkhornResult] = implicit_sinkhorn if self.implicit_gradient else sinkhorn
        result = solve(
            1.0 - sim.to(dtype),
            log_a,
            log_b,
            vmask,
            tmask,
            cfg.epsilon,
            cfg.iterations,
            tolerance=cfg.tolerance,
            domain=cfg.solver_domain,
        )
        self._note(result)
        return result.plan

    def _log_marginal(self, importance: Tensor, mask: Tensor) -> Tensor:
        """(B, L) log token masses: softmax over real tokens; −inf on padding."""
        if self.config.marginals == "uniform":
            importance = torch.zeros_like(importance)
        else:
            importance = importance / self.config.marginal_temperature
        return torch.log_softmax(importance.masked_fill(~mask, float("-inf")), dim=-1)

    @staticmethod
    def _score(flow: Tensor, sim: Tensor) -> Tensor:
        """Σ flow · similarity (padded pairs have flow 0 and similarity 0), in the input dtype."""
        return (flow * sim.to(flow.dtype)).sum(dim=(1, 2)).to(sim.dtype)


@dataclass(frozen=True, eq=False)
class FlowCaptions:
    """A block of prepared captions in the Newton path's layout: each caption's real words packed
    into a prefix of `width` slots. words (R, d) caption after caption; slots (R,) each word's
    place in (caption, prefix); word_mask (N, width) the real prefix slots; free the padded slots
    (flat); longest_word the largest word norm (0-dim, no gradient)."""

    batch: TokenBatch
    words: Tensor
    slots: Tensor
    word_mask: Tensor
    free: Tensor
    width: int
    longest_word: Tensor

    @classmethod
    def of(cls, text: TokenBatch) -> FlowCaptions:
        lengths = text.mask.sum(1)
        width = int(lengths.max())
        starts = torch.arange(len(text), device=lengths.device)[:, None] * width
        slots = (starts + text.mask.cumsum(1) - 1)[text.mask]
        words = text.tokens[text.mask]
        word_mask = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        free = (~word_mask).flatten().nonzero().flatten()
        with torch.no_grad():
            longest = words.norm(dim=1).amax() if len(words) else words.new_zeros(())
        return cls(text, words, slots, word_mask, free, width, longest)

    def __len__(self) -> int:
        return len(self.batch)
