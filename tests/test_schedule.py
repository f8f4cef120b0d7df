"""Schedules: NNI's values, holds between pruning steps, edges and errors."""

from __future__ import annotations

import functools

import pytest

from purecompress.pruning import (
    agp_schedule,
    compose_sparsity,
    constant_schedule,
    iteration_sparsities,
    linear_schedule,
    lottery_schedule,
    progress,
    relative_sparsity,
)


def test_agp_nni_values() -> None:
    assert iteration_sparsities("agp", 0.8, 4) == pytest.approx([0, 0.4625, 0.7, 0.7875, 0.8])


def test_task_counts() -> None:
    assert len(iteration_sparsities("linear", 0.5, 5)) == 6
    assert len(iteration_sparsities("agp", 0.5, 5)) == 6
    assert len(iteration_sparsities("lottery", 0.5, 5)) == 5


def test_linear_and_lottery_values() -> None:
    assert iteration_sparsities("linear", 0.5, 5) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5])
    lot = iteration_sparsities("lottery", 0.8, 4)
    assert lot == pytest.approx([1 - 0.2 ** (i / 4) for i in range(1, 5)])
    # each round prunes the same fraction of the survivors
    rel = [relative_sparsity(b, a) for a, b in zip([0.0, *lot[:-1]], lot)]
    assert rel == pytest.approx([rel[0]] * 4)


def test_agp_holds_between_pruning_steps_and_clamps() -> None:
    s = functools.partial(agp_schedule, final=0.9, begin=100, end=200, every=10)
    assert s(0) == 0.0 and s(100) == 0.0
    assert s(110) == s(119) < s(120)
    assert s(200) == s(10_000) == pytest.approx(0.9)


def test_initial_value() -> None:
    assert agp_schedule(0, 0.9, end=10, initial=0.3) == pytest.approx(0.3)
    assert linear_schedule(5, 0.9, end=10, initial=0.3) == pytest.approx(0.6)


def test_progress_edges() -> None:
    assert progress(-5, end=10) == 0.0
    assert progress(10, end=10) == 1.0


def test_relative_sparsity() -> None:
    assert relative_sparsity(0.8, 0.0) == 0.8
    assert relative_sparsity(0.8, 1.0) == 0.0
    assert compose_sparsity(0.4, relative_sparsity(0.7, 0.4)) == pytest.approx(0.7)


@pytest.mark.parametrize("bad", [dict(final=1.5, end=3), dict(final=0.5, end=0), dict(final=0.5, end=3, every=0)])
def test_errors(bad: dict) -> None:
    with pytest.raises(ValueError):
        agp_schedule(1, **bad)


def test_constant_and_unknown() -> None:
    assert constant_schedule(3, 0.25) == 0.25
    with pytest.raises(ValueError):
        constant_schedule(3, -0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        iteration_sparsities("cubic", 0.5, 3)  # type: ignore[arg-type]
    assert lottery_schedule(0, 0.5, end=3) == 0.0
