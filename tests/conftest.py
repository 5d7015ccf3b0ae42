"""Fixtures shared by the test files; the models they build live in `tests/models.py`
(plain imports there, so type checkers and readers can follow them)."""

from __future__ import annotations

import pytest

from .models import MLP, make_mlp


@pytest.fixture
def mlp() -> MLP:
    """A fresh 3 -> 4 -> 2 MLP (`tests.models.make_mlp`)."""
    return make_mlp()
