"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch

from tests.train_data import make_train_data


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> dict[str, str]:
    """The session's tiny dataset (:mod:`tests.train_data`): ``{"train": dir, "test": dir}``."""
    return make_train_data(tmp_path_factory.getbasetemp() / "train_data")


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (modules opt in with ``pytest.mark.usefixtures``).

    The CPU is shared: two OpenMP threads spinning against other processes run a tiny model
    ten times slower than one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
