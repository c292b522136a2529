"""Checkpoints: everything needed to resume a run exactly (model, loss, optimiser, scheduler,
grad scaler, epoch, step, best validation state, RNG states) and to evaluate it later (config)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from finealign.errors import DataError
from finealign.resources import disk_full_error, is_disk_full


def rng_state() -> dict[str, Any]:
    # numpy's state as plain ints, so the checkpoint loads with weights_only=True (no pickled arrays).
    # cast: the default (legacy) form is this tuple; the stub also allows the dict form.
    kind, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(state, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError("... file write failed")
        tmp.unlink(missing_ok=True)  # no half file beside the last good one
        if is_disk_full(exc) or "write failed" in str(exc):
            raise disk_full_error(path.parent, f"the checkpoint {path.name}") from exc
        raise
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        # weights_only: tensors, plain containers and numbers only. A pickle that would construct
        # any other object (a payload that runs code) is refused before anything runs.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"refusing to load {path}: it holds objects other than tensors, numbers and plain containers "
            f"(a finealign checkpoint never does; loading it could run code). {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # torch raises many types for a corrupt file
        raise DataError(f"cannot read checkpoint {path}: {exc}") from exc
