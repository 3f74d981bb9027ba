"""The parity helpers themselves, in the default suite (no official environment needed)."""

from __future__ import annotations

import pytest
from support import max_relative_difference


def test_max_relative_difference_is_relative_to_the_official_score():
    assert max_relative_difference([1.0, 2.2], [1.0, 2.0]) == pytest.approx(0.1)
    assert max_relative_difference([1e-7], [0.0]) == pytest.approx(0.1)  # floor of 1e-6


def test_max_relative_difference_refuses_unpaired_scores():
    with pytest.raises(AssertionError, match="2 scores here, 3 official"):
        max_relative_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(AssertionError, match="no scores"):
        max_relative_difference([], [])
