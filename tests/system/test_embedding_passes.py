"""The forward-pass plan of the embed task: pure arithmetic, no model needed."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("torch")

from workers.encoder import plan_passes  # noqa: E402


def test_every_text_once_and_passes_within_budget_and_padding() -> None:
    rng = random.Random(7)
    lengths = [rng.randrange(20, 260) for _ in range(300)]
    passes = plan_passes(lengths, batch_tokens=2048, max_padding=0.1)
    assert sorted(i for p in passes for i in p) == list(range(300))
    for p in passes:
        longest = max(lengths[i] for i in p)
        padded = longest * len(p)
        assert len(p) == 1 or padded <= 2048
        assert len(p) == 1 or padded - sum(lengths[i] for i in p) <= 0.1 * padded


def test_equal_lengths_fill_the_budget_and_a_long_text_goes_alone() -> None:
    assert [len(p) for p in plan_passes([100] * 50, batch_tokens=1000)] == [10] * 5
    assert plan_passes([5000], batch_tokens=1000) == [[0]]  # over budget: alone, not dropped
    assert plan_passes([], batch_tokens=1000) == []


def test_very_different_lengths_are_not_padded_together() -> None:
    passes = plan_passes([10, 200, 11, 210], batch_tokens=10_000, max_padding=0.1)
    assert sorted(map(sorted, passes)) == [[0, 2], [1, 3]]
