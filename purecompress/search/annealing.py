"""Simulated annealing over per-layer sparsities that meet a total budget (NNI's SA semantics).

A candidate is one sparsity per layer. Sparsities are kept sorted and given to the layers in
ascending order of size (larger layers are pruned more, the AutoCompress heuristic), then scaled
so that the pruned weights, ``sum(int(n_i * s_i))``, are ``total`` of all weights.

As in NNI 2.10: a candidate scoring better than the current one is accepted, a worse one with
probability ``exp(-|delta| / T)``; the temperature cools by ``cool_down_rate`` *on acceptance*;
the search stops once it is below ``stop_temperature``; perturbations are uniform in
``+-perturbation_magnitude * T / start_temperature``.

Ask/tell: :meth:`Annealer.init` gives the first candidate, :meth:`Annealer.tell` takes its score
and gives the next one (``state.done`` when finished). :func:`anneal_sparsities` runs the loop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence

import attrs

__all__ = ["AnnealResult", "AnnealState", "Annealer", "anneal_sparsities", "rescale_to_budget"]


def rescale_to_budget(sparsities: Sequence[float], sizes: Sequence[int], total: float) -> list[float] | None:
    """Sort ``sparsities`` and scale them so ``sum(int(n*s)) / sum(n) == total`` over ``sizes``.

    ``sizes`` are matched in ascending order. None when nothing would be pruned.

    >>> [round(s, 4) for s in rescale_to_budget([0.2, 0.1], [100, 300], 0.3)]
    [0.1714, 0.3429]
    """
    sizes = sorted(sizes)
    ordered = sorted(sparsities)
    pruned = sum(int(n * s) for n, s in zip(sizes, ordered))
    if pruned == 0:
        return None
    scale = total / (pruned / sum(sizes))
    return [s * scale for s in ordered]


def _valid(candidate: list[float] | None) -> bool:
    return candidate is not None and candidate[0] >= 0 and candidate[-1] < 1


Candidate = tuple[tuple[float, ...], ...]


@attrs.frozen
class AnnealState:
    """Attributes: temperature; candidate (to evaluate next: per group, sparsities by ascending
    layer size); current / score (accepted so far, None before the first score); done."""

    temperature: float
    candidate: Candidate
    current: Candidate | None = None
    score: float | None = None
    done: bool = False


def _tuple_of_dicts(groups: Sequence[Mapping[str, int]]) -> tuple[Mapping[str, int], ...]:
    return tuple(dict(g) for g in groups)


@attrs.frozen
class Annealer:
    """The search's fixed parameters. Groups (NNI: one per ``total_sparsity`` config) share the
    temperature and the acceptance decision; each meets its own total.

    Attributes:
        groups: per group, layer name -> number of (unpruned) weights.
        totals: per group, the fraction of its weights to prune, in ``[0, 1)``.
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: as in NNI.
    """

    groups: tuple[Mapping[str, int], ...] = attrs.field(converter=_tuple_of_dicts)
    totals: tuple[float, ...] = attrs.field(converter=tuple)
    start_temperature: float = 100.0
    stop_temperature: float = 20.0
    cool_down_rate: float = 0.9
    perturbation_magnitude: float = 0.35

    def names(self, group: int) -> list[str]:
        """A group's layer names in ascending size (stable), the order of its candidate entries."""
        sizes = self.groups[group]
        return sorted(sizes, key=lambda n: sizes[n])

    def allocation(self, candidate: Candidate) -> dict[str, float]:
        """Layer name -> sparsity for a candidate (all groups)."""
        return {n: s for g, c in enumerate(candidate) for n, s in zip(self.names(g), c)}

    def _resample(self, group: int, *draws: Callable[[], list[float]]) -> tuple[float, ...]:
        """The first valid candidate from ``draws`` in turn (10 000 tries each)."""
        if self.totals[group] == 0:
            return tuple(0.0 for _ in self.groups[group])
        sizes = [self.groups[group][n] for n in self.names(group)]
        for draw in draws:
            for _ in range(10_000):
                candidate = rescale_to_budget(draw(), sizes, self.totals[group])
                if _valid(candidate):
                    return tuple(candidate)  # type: ignore[arg-type]
        raise RuntimeError(f"no per-layer sparsities reach total {self.totals[group]} for layer sizes {sizes}")

    def _fresh_draw(self, group: int, rng: random.Random) -> Callable[[], list[float]]:
        """NNI's first draw: uniform sparsities whose lower bound rises by 5% per failed draw."""
        low = [0.0]

        def draw() -> list[float]:
            low[0] = (1 - low[0]) * 0.05 + low[0]
            return sorted(rng.uniform(low[0], 1) for _ in self.groups[group])

        return draw

    def init(self, rng: random.Random) -> AnnealState:
        """A random first candidate (NNI raises the lower bound by 5% per failed draw)."""
        return AnnealState(self.start_temperature,
                           tuple(self._resample(g, self._fresh_draw(g, rng)) for g in range(len(self.groups))))

    def tell(self, state: AnnealState, score: float, rng: random.Random) -> AnnealState:
        """Take the candidate's score; accept or reject, cool, propose the next candidate."""
        temperature, current, best = state.temperature, state.current, state.score
        if current is None or best is None:
            current, best = state.candidate, score
        else:
            probability = math.exp(-abs(score - best) / temperature)
            if best < score or rng.uniform(0, 1) < probability:
                current, best = state.candidate, score
                temperature *= self.cool_down_rate
        if temperature < self.stop_temperature:
            return AnnealState(temperature, state.candidate, current, best, done=True)
        magnitude = temperature / self.start_temperature * self.perturbation_magnitude

        def perturbed(group: int, base: tuple[float, ...]) -> tuple[float, ...]:
            def draw() -> list[float]:
                return [max(0.0, s + rng.uniform(-magnitude, magnitude)) for s in base]

            # a small perturbation of a tiny layer's sparsity may never prune a whole weight (int(n*s)
            # stays 0): a fresh draw then (NNI loops forever there)
            return self._resample(group, draw, self._fresh_draw(group, rng))

        candidate = tuple(perturbed(g, base) for g, base in enumerate(current))
        return AnnealState(temperature, candidate, current, best)


@attrs.frozen
class AnnealResult:
    """Attributes: sparsities (best, by layer name), score (its score), history (every candidate
    evaluated with its score, in order)."""

    sparsities: Mapping[str, float]
    score: float
    history: tuple[tuple[Mapping[str, float], float], ...]


def anneal_sparsities(evaluate: Callable[[dict[str, float]], float], sizes: Mapping[str, int], total: float, *,
                      seed: int | None = None, **options: float) -> AnnealResult:
    """Search per-layer sparsities meeting ``total`` that maximise ``evaluate``.

    Args:
        evaluate: layer name -> sparsity, to a score (higher is better), e.g. accuracy after
            pruning each layer to its sparsity.
        sizes: layer name -> weight count.
        total: fraction of all weights to prune.
        seed: for the random draws (``random.Random(seed)``).
        **options: ``start_temperature``, ``stop_temperature``, ``cool_down_rate``,
            ``perturbation_magnitude`` (NNI's defaults 100, 20, 0.9, 0.35).

    >>> r = anneal_sparsities(lambda s: -abs(s['a'] - 0.5), {'a': 100, 'b': 300}, 0.5, seed=0)
    >>> sorted(r.sparsities), len(r.history) > 1
    (['a', 'b'], True)
    """
    annealer = Annealer([sizes], (total,), **options)  # type: ignore[arg-type]  # mypy reads converter=tuple as tuple[_T_co]
    rng = random.Random(seed)
    state = annealer.init(rng)
    history: list[tuple[Mapping[str, float], float]] = []
    best: tuple[Mapping[str, float], float] | None = None
    while not state.done:
        allocation = annealer.allocation(state.candidate)
        score = float(evaluate(allocation))
        history.append((allocation, score))
        if best is None or score > best[1]:
            best = (allocation, score)
        state = annealer.tell(state, score, rng)
    assert best is not None
    return AnnealResult(best[0], best[1], tuple(history))
