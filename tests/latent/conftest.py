"""Latent-lab tests run torch on one thread: the models are tiny, and on a shared 2-core machine a
second thread mostly adds contention (runs became many times slower when other jobs were busy)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
