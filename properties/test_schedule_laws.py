"""Laws of the sparsity schedules and of relative sparsity."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from purecompress.pruning import agp_schedule, compose_sparsity, linear_schedule, lottery_schedule, relative_sparsity

fractions = st.floats(0.0, 1.0, allow_nan=False)
schedules = st.sampled_from([agp_schedule, linear_schedule, lottery_schedule])


@st.composite
def spans(draw: st.DrawFn) -> dict:
    begin = draw(st.integers(0, 50))
    return {"begin": begin, "end": begin + draw(st.integers(1, 200)), "every": draw(st.integers(1, 20))}


@given(schedule=schedules, final=fractions, span=spans(), a=st.integers(-10, 300), b=st.integers(-10, 300))
def test_schedules_are_monotone(schedule: object, final: float, span: dict, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert schedule(lo, final, **span) <= schedule(hi, final, **span) + 1e-12  # type: ignore[operator]


@given(schedule=schedules, final=fractions, span=spans(), before=st.integers(0, 100), after=st.integers(0, 100))
def test_schedules_start_and_end_where_they_say(schedule: object, final: float, span: dict, before: int,
                                                after: int) -> None:
    assert schedule(span["begin"] - before, final, **span) == 0.0  # type: ignore[operator]
    assert abs(schedule(span["end"] + after, final, **span) - final) < 1e-12  # type: ignore[operator]


@given(final=fractions, initial=fractions, span=spans(), step=st.integers(0, 300))
def test_values_stay_between_initial_and_final(final: float, initial: float, span: dict, step: int) -> None:
    for schedule in (agp_schedule, linear_schedule):
        value = schedule(step, final, initial=initial, **span)
        assert min(initial, final) - 1e-12 <= value <= max(initial, final) + 1e-12


@given(target=fractions, current=st.floats(0.0, 0.999, allow_nan=False))
def test_relative_sparsity_composes_to_the_target(target: float, current: float) -> None:
    relative = relative_sparsity(target, current)
    assert 0.0 <= relative <= 1.0
    assert abs(compose_sparsity(current, relative) - max(target, current)) < 1e-9


@given(final=st.floats(0.0, 0.99), rounds=st.integers(1, 10))
def test_lottery_prunes_the_same_fraction_each_round(final: float, rounds: int) -> None:
    values = [lottery_schedule(i, final, end=rounds) for i in range(rounds + 1)]
    fractions_ = [relative_sparsity(b, a) for a, b in zip(values, values[1:])]
    assert max(fractions_) - min(fractions_) < 1e-9
