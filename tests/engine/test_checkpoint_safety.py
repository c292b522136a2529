"""Checkpoints cannot run code: a pickle with a payload is refused before the payload runs."""

import os
import pickle

import pytest
import torch

from finealign.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from finealign.errors import DataError


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"model": {}, "config": {}, "x": Payload(str(marker))}, fh)
    torch.save({"model": {}, "config": {}, "x": Payload(str(marker))}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        with pytest.raises(DataError, match="refusing to load|cannot read"):
            load_checkpoint(path)
    assert not marker.exists()


def test_a_real_checkpoint_with_rng_states_round_trips(tmp_path):
    import random

    import numpy as np

    state = {"model": {"w": torch.ones(2)}, "rng": rng_state(), "config": {"a": [1, 2.5, "x", None]}}
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    path = save_checkpoint(tmp_path / "ok.pt", state)
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert loaded["config"] == state["config"]
