"""Engine tests train tiny models: one intra-op thread avoids thread thrashing on a busy 2-core CI
machine (it made each step ~20× slower there) and keeps results reproducible."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
