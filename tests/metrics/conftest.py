import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _threads_per_worker():
    """One share of the cores per pytest-xdist worker, for these tests only.

    Module-scoped, so it is in place before the modules' own (module-scoped) fixtures train
    anything. Under ``pytest -n 2`` on 2 cores each worker would otherwise run torch's 2
    OpenMP threads; oversubscribed OpenMP spins and is many times slower on small convolutions
    and matmuls.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
    yield
    torch.set_num_threads(before)
