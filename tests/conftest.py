"""Shared test settings: deterministic, single-threaded torch (CI has 2 cores, run with -n 2)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
