"""Shared fixtures."""

import numba
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """torch and numba on one thread for the module. Tiny tensors: with two intra-op threads some
    steps cost milliseconds on small CPUs, and far more when other processes load the machine."""
    threads, nb_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(1)   # first: numba's first set_num_threads resets torch's thread count
    torch.set_num_threads(1)
    yield
    numba.set_num_threads(nb_threads)
    torch.set_num_threads(threads)
