"""Shared test settings: deterministic, single-threaded torch (CI has 2 cores, run with -n 2)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digit_classifier_cache(tmp_path_factory):
    """A file holding the stacked-digits classifier, trained once per test session."""
    from normlab.metrics import digit_classifier

    path = tmp_path_factory.mktemp("digit_classifier") / "digit_classifier.pt"
    digit_classifier(path)
    return str(path)
