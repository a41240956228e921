"""Shared pytest fixtures for mechinterp_c."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A seeded NumPy generator, fresh per test."""
    return np.random.default_rng(1234)
