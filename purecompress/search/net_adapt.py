"""NetAdapt (Yang et al. 2018), NNI 1.x's weight-budget form: prune one layer per iteration.

Each iteration must remove ``budget = int(step * sum(n_i))`` weights, counted over ``chain`` (NNI:
every Conv2d and Linear, in model order). For each target layer in turn, the sparsity that removes
them is its current (measured) sparsity plus ``budget / related``, where ``related`` counts the
layer's weights (times ``1 -`` the sparsity chosen for the layer before it in ``chain``) and the
weights still kept in the layer after it: filter pruning removes that next layer's input channels
too. The candidate masks come from the base algorithm (a core metric, one allocation per layer at
the sparsities chosen so far plus this layer's new one, on the weights as the last iteration left
them); the candidate is fine-tuned (``fine_tune``), scored (``evaluate``), and the best layer is
kept. The search stops once the nominal overall sparsity ``k * step`` reaches ``sparsity``.

Where no layer can remove the budget (every candidate would reach sparsity 1), NNI halves its
nominal step but not the weight budget, and so retries the same layers forever; here both halve,
and the search ends (with a warning) once the budget is under one weight.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import attrs
from torch import Tensor

from purecompress.pruning import Masks, Metric, allocate_per_layer, apply_masks, bias_masks, l1_norm

__all__ = ["NetAdaptCandidate", "NetAdaptResult", "NetAdaptStep", "netadapt"]

MetricFn = Callable[[Mapping[str, Tensor], list[str]], Mapping[str, Metric]]
FineTune = Callable[[dict[str, Tensor], Masks], Mapping[str, Tensor]]
Evaluate = Callable[[dict[str, Tensor], Masks], float]


@attrs.frozen
class NetAdaptCandidate:
    """One layer tried in one iteration.

    Attributes:
        layer: the weight's name; sparsity: the layer sparsity tried; score: ``evaluate``'s value.
    """

    layer: str
    sparsity: float
    score: float


@attrs.frozen
class NetAdaptStep:
    """One iteration.

    Attributes:
        iteration: its index (from 0).
        budget: weights it had to remove; step: its nominal overall-sparsity step.
        candidates: every layer tried, in target order (layers that would reach sparsity 1 are skipped).
        chosen: the best candidate, or None when no layer could remove the budget (the next
            iteration halves it).
        overall: the nominal overall sparsity after it.
    """

    iteration: int
    budget: int
    step: float
    candidates: tuple[NetAdaptCandidate, ...]
    chosen: NetAdaptCandidate | None
    overall: float


@attrs.frozen
class NetAdaptResult:
    """What :func:`netadapt` found.

    Attributes:
        masks: the targets' masks (``'<module>.weight'``, and ``'<module>.bias'`` with ``biases``);
            a layer never chosen has none (dense).
        params: the last chosen candidate's parameters, fine-tuned and masked (the input params
            when no layer was chosen).
        sparsities: layer -> sparsity chosen for it (NNI's generated config), in first-chosen order.
        score: the last chosen candidate's score (None when none was chosen).
        sparsity: the nominal overall sparsity reached (``>= sparsity`` unless the search gave up).
        history: every iteration, in order.
    """

    masks: Masks
    params: Mapping[str, Tensor]
    sparsities: Mapping[str, float]
    score: float | None
    sparsity: float
    history: tuple[NetAdaptStep, ...]


def _related(layer: str, chain: Sequence[str], numel: Mapping[str, int], chosen: Mapping[str, float],
             masks: Masks) -> float:
    """The weights that pruning ``layer``'s filters touches: its own, after the previous layer's
    chosen sparsity, plus the next layer's kept weights (NNI's ``_calc_num_related_weights``)."""
    i = chain.index(layer)
    related: float = numel[layer]
    if i > 0 and chosen.get(chain[i - 1]):
        related *= 1 - chosen[chain[i - 1]]
    if i + 1 < len(chain):
        after = chain[i + 1]
        related += int(masks[after].kept()) if after in masks else numel[after]
    return related


def _base_masks(params: Mapping[str, Tensor], sparsities: Mapping[str, float], metric: MetricFn,
                biases: bool) -> Masks:
    masks = allocate_per_layer(dict(metric(params, list(sparsities))), dict(sparsities))
    if not biases:
        return masks
    shapes = {n[: -len("weight")] + "bias": tuple(params[n[: -len("weight")] + "bias"].shape) for n in sparsities
              if n.endswith("weight") and n[: -len("weight")] + "bias" in params}
    return bias_masks(masks, shapes)


def _check(params: Mapping[str, Tensor], targets: Sequence[str], chain: Sequence[str], sparsity: float,
           step: float) -> None:
    if not 0 < sparsity < 1:
        raise ValueError(f"netadapt: sparsity must be in (0, 1), got {sparsity}")
    if not 0 < step < 1:
        raise ValueError(f"netadapt: step must be in (0, 1), got {step}")
    if not targets:
        raise ValueError("netadapt: no targets to prune")
    missing = [n for n in chain if n not in params]
    if missing:
        raise KeyError(f"netadapt: not in params: {missing}")
    outside = [n for n in targets if n not in chain]
    if outside:
        raise ValueError(f"netadapt: targets {outside} are not in chain (the counted layers, in model order)")


def netadapt(params: Mapping[str, Tensor], targets: Sequence[str], sparsity: float, *, evaluate: Evaluate,
             fine_tune: FineTune | None = None, metric: MetricFn = l1_norm, chain: Sequence[str] | None = None,
             step: float = 0.05, maximize: bool = True, biases: bool = True) -> NetAdaptResult:
    """Prune ``targets`` one layer per iteration until ``sparsity`` of ``chain``'s weights is budgeted.

    Args:
        params: name -> tensor (not modified).
        targets: the weights to prune (e.g. ``['conv1.weight', 'conv2.weight']``), tried in this order.
        sparsity: the overall sparsity to reach, in (0, 1) (NNI's ``config_list[0]['sparsity']``).
        evaluate: ``(params, masks) -> score`` of a candidate (params already masked and fine-tuned).
        fine_tune: ``(params, masks) -> params``, a short fine-tune of a candidate (its own copies
            of the tensors); None: no fine-tuning.
        metric: the base algorithm's score, ``(params, names) -> Metrics``: :func:`purecompress.level`,
            :func:`~purecompress.l1_norm` (default), :func:`~purecompress.l2_norm`, :func:`~purecompress.fpgm`.
        chain: the counted weights in model order (NNI: every Conv2d and Linear); default ``targets``.
        step: the fraction of ``chain``'s weights each iteration removes (NNI's ``sparsity_per_iteration``).
        maximize: whether a higher score is better (NNI's ``optimize_mode='maximize'``).
        biases: also mask a target's bias where its output channel is pruned (filter pruning);
            False leaves biases dense (NNI's level pruner).

    Returns:
        :class:`NetAdaptResult`.

    >>> import torch
    >>> p = {'a': torch.arange(1., 9.).view(4, 2), 'b': torch.ones(2, 4)}
    >>> r = netadapt(p, ['a'], 0.2, evaluate=lambda q, m: float(q['a'].abs().sum()), chain=['a', 'b'], step=0.25)
    >>> r.sparsities, r.masks['a'].keep.flatten().tolist()
    ({'a': 0.25}, [False, True, True, True])
    """
    chain = list(targets if chain is None else chain)
    _check(params, targets, chain, sparsity, step)
    numel = {n: params[n].numel() for n in chain}
    budget = int(sum(numel.values()) * step)
    current: dict[str, Tensor] = {n: t.detach() for n, t in params.items()}
    masks: Masks = {}
    chosen: dict[str, float] = {}
    overall, score = 0.0, None
    history: list[NetAdaptStep] = []

    def better(value: float, best: float) -> bool:
        return value > best if maximize else value < best

    while overall < sparsity:
        candidates: list[NetAdaptCandidate] = []
        best: tuple[NetAdaptCandidate, Masks, dict[str, Tensor]] | None = None
        for layer in targets:
            now = masks[layer].sparsity() if layer in masks else 0.0
            target = now + budget / _related(layer, chain, numel, chosen, masks)
            if target >= 1:
                continue
            trial = _base_masks(current, {**chosen, layer: target}, metric, biases)
            tuned = apply_masks(current, trial)
            if fine_tune is not None:
                tuned = apply_masks(dict(fine_tune({n: t.clone() for n, t in tuned.items()}, trial)), trial)
            candidate = NetAdaptCandidate(layer, target, float(evaluate(dict(tuned), trial)))
            candidates.append(candidate)
            if best is None or better(candidate.score, best[0].score):
                best = (candidate, trial, tuned)
        if best is None:
            history.append(NetAdaptStep(len(history), budget, step, tuple(candidates), None, overall))
            budget, step = budget // 2, step / 2
            if budget < 1:
                warnings.warn(f"netadapt: no layer can remove another weight; stopped at overall sparsity {overall} "
                              f"of {sparsity}", RuntimeWarning, stacklevel=2)
                break
            continue
        candidate, trial, current = best
        chosen[candidate.layer] = candidate.sparsity
        suffix = candidate.layer[: -len("weight")] + "bias" if candidate.layer.endswith("weight") else None
        masks = {**masks, **{n: m for n, m in trial.items() if n in (candidate.layer, suffix)}}
        overall, score = overall + step, candidate.score
        history.append(NetAdaptStep(len(history), budget, step, tuple(candidates), candidate, overall))
    return NetAdaptResult(masks, current, dict(chosen), score, overall, tuple(history))
