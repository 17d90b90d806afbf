"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Keep every test on one intra-op thread: the CI machine's cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
