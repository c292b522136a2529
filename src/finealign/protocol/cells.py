"""What a protocol runs, as cells: a method's base (its tuned config as is) and each factor level
that changes something for it. One home for where a cell's runs live and which study tunes it.

- base cell `global`: tuned by study `STUDY-global`, final runs in `final/global/seed_S`;
- level cell `global head=transformer`: final runs in `final/global/head-transformer/seed_S`,
  tuned by the base study (its best params with the level on top), or, for a factor with
  `retune: true`, by its own study `STUDY-global-head=transformer` (same budget, sampler, space).

A level whose overrides are empty for a method *is* that method's base config: it is no cell of
its own (never run twice); reports show it as "= base".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from finealign.protocol.spec import ProtocolSpec
from finealign.sweeps.spec_parts import override_key


@dataclass(frozen=True, order=True)
class Cell:
    method: str
    factor: str | None = None  # None: the base
    level: str | None = None

    @property
    def is_base(self) -> bool:
        return self.factor is None

    @property
    def label(self) -> str:
        return self.method if self.is_base else f"{self.method} {self.factor}={self.level}"

    @property
    def path(self) -> Path:
        """Relative folder of the cell under `final/` and `tune/`: FACTOR-LEVEL ('-' is in no factor
        or level name; '=' would break the `output_dir=...` override the run gets)."""
        return Path(self.method) if self.is_base else Path(self.method) / f"{self.factor}-{self.level}"

    def final_dir(self, out: Path, seed: int) -> Path:
        return Path(out) / "final" / self.path / f"seed_{seed}"

    def base(self) -> Cell:
        return Cell(self.method)


def level_overrides(spec: ProtocolSpec, cell: Cell) -> tuple[str, ...]:
    if cell.is_base:
        return ()
    assert cell.factor is not None and cell.level is not None
    return spec.factor(cell.factor).level(cell.level).for_method(cell.method)


def retuned(spec: ProtocolSpec, cell: Cell) -> bool:
    """True when the cell has a tuning study of its own."""
    return not cell.is_base and spec.factor(str(cell.factor)).retune


def tuning_cell(spec: ProtocolSpec, cell: Cell) -> Cell:
    """The cell whose study's best params a cell's final runs start from."""
    return cell if cell.is_base or retuned(spec, cell) else cell.base()


def study_name(spec: ProtocolSpec, cell: Cell) -> str:
    """The tuning study of a cell that is tuned (a base, or a level of a `retune` factor)."""
    if cell.is_base:
        return f"{spec.study}-{cell.method}"
    return f"{spec.study}-{cell.method}-{cell.factor}={cell.level}"


def tuned_away(spec: ProtocolSpec, cell: Cell) -> set[str]:
    """Keys a retuned level fixes itself, so its study does not tune them (the level wins)."""
    return {override_key(o) for o in level_overrides(spec, cell)}


def base_cells(spec: ProtocolSpec, methods: Iterable[str] | None = None) -> list[Cell]:
    wanted = None if methods is None else set(methods)
    return [Cell(m.name) for m in spec.methods if wanted is None or m.name in wanted]


def level_cells(
    spec: ProtocolSpec, methods: Iterable[str] | None = None, factors: Iterable[str] | None = None
) -> list[Cell]:
    """Every factor level that changes something for a method, factor by factor, level by level,
    in the protocol's method order. `factors`: None = all, [] = none."""
    wanted_m = None if methods is None else set(methods)
    wanted_f = None if factors is None else set(factors)
    out = []
    for factor in spec.factors:
        if wanted_f is not None and factor.name not in wanted_f:
            continue
        for level in factor.levels[1:]:
            for m in spec.methods:
                if factor.runs(m.name) and (wanted_m is None or m.name in wanted_m) and level.for_method(m.name):
                    out.append(Cell(m.name, factor.name, level.name))
    return out


def cells(spec: ProtocolSpec, methods: Iterable[str] | None = None, factors: Iterable[str] | None = None) -> list[Cell]:
    """The bases first (a stopped protocol has its main table), then the factor levels."""
    methods = None if methods is None else list(methods)
    return [*base_cells(spec, methods), *level_cells(spec, methods, factors)]


def cell_of(spec: ProtocolSpec, method: str, factor: str, level: str) -> Cell:
    """The cell that holds a method's runs at a factor level (its base when the level changes
    nothing for it)."""
    if level == spec.factor(factor).base.name or not spec.factor(factor).level(level).for_method(method):
        return Cell(method)
    return Cell(method, factor, level)
