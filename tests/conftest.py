"""Suite-wide settings for the tests."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' models are tiny: one thread is fastest for them and does not thrash a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
