"""Shared test settings: no network, and a private cache of trained baselines per test session."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker takes one core: one torch thread, for itself and for the
    processes its tests start (a second thread per worker only oversubscribes the machine)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """Keep tests off the user's ``~/.cache/taylorprune``, off the tools' cache in the checkout and
    off the network (weights, data)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAYLORPRUNE_CACHE", str(tmp_path_factory.mktemp("taylorprune-cache")))
        mp.setenv("TAYLORPRUNE_STUDY_CACHE", str(tmp_path_factory.mktemp("study-cache")))
        mp.setenv("TAYLORPRUNE_OFFLINE", "1")
        yield


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny models run fastest so, and CI shares its cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
