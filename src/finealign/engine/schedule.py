"""Learning-rate schedule: linear warm-up, then cosine decay, step decay, or constant."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class LRSchedule:
    """Multiplier of the peak learning rate at optimiser step `step` (a LambdaLR lambda).

    A dataclass rather than a closure, so LambdaLR's state_dict saves it with the checkpoint.
    """

    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"  # cosine | step | constant
    steps_per_epoch: int = 1
    step_epochs: int = 10
    gamma: float = 0.1
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** (step // max(1, self.steps_per_epoch * self.step_epochs))
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
