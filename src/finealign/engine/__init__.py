"""Training and evaluation engine (see docs/training.md).

model.py (assembly by name) · batching.py (pairs, positives) · optim.py · schedule.py ·
trainer.py (the loop, checkpoint/resume) · evaluate.py + metrics.py (gallery scoring, recall) ·
results.py (JSON + CSV) · experiment.py (`run_experiment`, `evaluate_checkpoint`).
"""

from finealign.engine.experiment import evaluate_checkpoint, run_experiment

__all__ = ["evaluate_checkpoint", "run_experiment"]
