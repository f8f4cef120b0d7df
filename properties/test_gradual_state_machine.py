"""Gradual pruning as a state machine: train / prune / rewind steps in any order.

Invariants after every step: masks are valid (shapes, bool), pruned entries are zero in the
params, a pruned entry is never un-pruned, and each target's sparsity is the schedule's
(``int(s * n)`` entries pruned for the highest scheduled ``s`` so far).
"""

from __future__ import annotations

import functools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from purecompress.pruning import agp_schedule, gradual, rewind

SHAPES = {"a": (6, 5), "b": (4, 3, 2)}
SCHEDULE = functools.partial(agp_schedule, final=0.9, begin=1, end=9, every=2)


class GradualMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.initial = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
        self.params = dict(self.initial)
        self.prune = gradual(SCHEDULE, list(SHAPES))
        self.state = self.prune.init(self.params)
        self.highest = 0.0
        self.pruned_before: dict[str, torch.Tensor] = {}

    @rule(scale=st.floats(-2.0, 2.0, allow_nan=False), seed=st.integers(0, 2**16))
    def train(self, scale: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.params = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in self.params.items()}
        # the training step ran on masked params: keep the masks applied, as a user loop would
        self.params = rewind({}, self.state.masks, self.params)

    @rule()
    def prune_step(self) -> None:
        step = self.state.step
        self.params, self.state = self.prune.update(self.params, self.state)
        self.highest = max(self.highest, SCHEDULE(step))

    @rule(step=st.integers(0, 12))
    def prune_at(self, step: int) -> None:
        self.params, self.state = self.prune.update(self.params, self.state, step=step)
        self.highest = max(self.highest, SCHEDULE(step))

    @precondition(lambda self: bool(self.state.masks))
    @rule()
    def rewind_weights(self) -> None:
        self.params = rewind(self.initial, self.state.masks, self.params)

    @invariant()
    def masks_valid_and_on_schedule(self) -> None:
        for name, shape in SHAPES.items():
            mask = self.state.masks.get(name)
            if mask is None:
                assert self.highest == 0.0
                continue
            assert mask.shape == shape and mask.keep.dtype == torch.bool
            dense = mask.broadcastable().expand(shape)
            n = dense.numel()
            assert int((~dense).sum()) == int(self.highest * n)
            assert (self.params[name][~dense] == 0).all()
            if name in self.pruned_before:
                assert not (dense & self.pruned_before[name]).any(), "un-pruned an entry"
            self.pruned_before[name] = ~dense
        assert self.state.sparsity == self.highest


TestGradualMachine = GradualMachine.TestCase
TestGradualMachine.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)


@given(st.lists(st.integers(0, 12), max_size=8))
def test_sparsity_is_the_running_maximum_of_the_schedule(steps: list[int]) -> None:
    prune = gradual(SCHEDULE, ["a"])
    params = {"a": torch.arange(30.0).reshape(6, 5)}
    state = prune.init(params)
    for step in steps:
        params, state = prune.update(params, state, step=step)
    assert state.sparsity == max([SCHEDULE(s) for s in steps], default=0.0)
