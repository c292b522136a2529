"""How a TokenFlow Sinkhorn is solved, as one object from the caller to the kernel launch.

`SinkhornOptions` is what a caller gives (`sinkhorn_flow_scores(options=...)`, the tokenflow
aligner): each value is checked once, here, when the object is built. `SinkhornLaunch` is what one
launch of the fused Triton kernels needs of it (plus the marginals' kind and the launch shape);
it is flattened to scalars only at the custom-op boundary (`op_args` / `from_op_args`), where
torch.library's schema needs scalars, and rebuilt on the other side. Plain Python: imports
without Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

from finealign.checks import check_bool, check_choice, check_number, check_positive_int
from finealign.kernels.dispatch import check_backend

SINKHORN_DOMAINS = ("log", "scaling")


@dataclass(frozen=True)
class SinkhornOptions:
    """How `sinkhorn_flow_scores` solves: one object instead of a dozen keyword arguments, checked
    once when built (a bad value is a ConfigError naming it).

    epsilon, iterations: entropic regularisation and iteration count. rows: the side log_sinkhorn
    treats as rows (updated first each iteration); one_sided drops that side's constraint.
    marginal_temperature: τ of the importance marginals (with pooled vectors). backend: auto |
    torch | triton. chunk_visual/chunk_text bound the torch path's temporaries;
    captions_per_program (null: the default) and num_warps (null: the default) shape the Triton
    launch. domain: how the Triton kernel iterates — "log" (log-sum-exps) or "scaling"
    (multiply-adds on exp(−C/ε), absorbed into the log potentials every `absorb_every`
    iterations; pairs where that loses precision are redone in the log domain).
    """

    epsilon: float = 0.1
    iterations: int = 20
    rows: str = "visual"
    one_sided: bool = False
    marginal_temperature: float = 0.1
    backend: str = "auto"
    chunk_visual: int = 16
    chunk_text: int = 64
    captions_per_program: int | None = None
    domain: str = "log"
    absorb_every: int = 10
    num_warps: int | None = None

    def __post_init__(self) -> None:
        check_number("epsilon", self.epsilon, low=0, strict=True)
        check_number("marginal_temperature", self.marginal_temperature, low=0, strict=True)
        check_positive_int("iterations", self.iterations)
        check_choice("rows", self.rows, ("visual", "text"))
        check_bool("one_sided", self.one_sided)
        check_backend(self.backend)
        check_positive_int("chunk_visual", self.chunk_visual)
        check_positive_int("chunk_text", self.chunk_text)
        check_positive_int("captions_per_program", self.captions_per_program, optional=True)
        check_choice("domain", self.domain, SINKHORN_DOMAINS)
        check_positive_int("absorb_every", self.absorb_every)
        check_positive_int("num_warps", self.num_warps, optional=True)


@dataclass(frozen=True)
class SinkhornLaunch:
    """What one launch of the fused Sinkhorn kernels needs: the solve (from SinkhornOptions), the
    kind of marginals (`importance`: per-pair softmaxes of pooled vectors, else given log masses),
    whether it iterates in the scaling domain, and the launch shape (0 = the default)."""

    epsilon: float
    marginal_temperature: float
    iterations: int
    text_first: bool
    one_sided: bool
    importance: bool
    scaling: bool
    absorb_every: int
    captions_per_program: int
    num_warps: int

    @classmethod
    def of(cls, options: SinkhornOptions, *, importance: bool, scaling: bool) -> SinkhornLaunch:
        return cls(
            epsilon=float(options.epsilon),
            marginal_temperature=float(options.marginal_temperature),
            iterations=int(options.iterations),
            text_first=options.rows == "text",
            one_sided=bool(options.one_sided),
            importance=bool(importance),
            scaling=bool(scaling),
            absorb_every=int(options.absorb_every),
            captions_per_program=int(options.captions_per_program or 0),
            num_warps=int(options.num_warps or 0),
        )

    def op_args(self) -> tuple[float, float, int, bool, bool, bool, bool, int, int, int]:
        """The scalars of a finealign::sinkhorn_* custom op, in its schema's order (the fields')."""
        return (self.epsilon, self.marginal_temperature, self.iterations, self.text_first, self.one_sided,
                self.importance, self.scaling, self.absorb_every, self.captions_per_program, self.num_warps)  # fmt: skip

    @classmethod
    def from_op_args(
        cls,
        epsilon: float,
        marginal_temperature: float,
        iterations: int,
        text_first: bool,
        one_sided: bool,
        importance: bool,
        scaling: bool,
        absorb_every: int,
        captions_per_program: int,
        num_warps: int,
    ) -> SinkhornLaunch:
        """Back from `op_args` on the custom op's side (positional: torch.library passes them so)."""
        return cls(epsilon, marginal_temperature, iterations, text_first, one_sided, importance, scaling,
                   absorb_every, captions_per_program, num_warps)  # fmt: skip
