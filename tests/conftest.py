"""Fixtures shared by test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: extra intra-op threads only spin, and on a busy 2-core machine run up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
