"""NetAdapt as a pure core search (purecompress.search.netadapt): NNI 1.x's weight budget, one
layer per iteration, masks from a core metric, the caller's fine-tune and evaluate callbacks."""

from __future__ import annotations

import pytest
import torch

import purecompress as pc
from purecompress.search import NetAdaptResult, netadapt

CHAIN = ["c1.weight", "c2.weight", "fc.weight"]


def _params() -> dict[str, torch.Tensor]:
    """c1 [4, 2] (+ bias) -> c2 [4, 4] -> fc [2, 4]: 32 counted weights; c2's row 3 is the cheapest."""
    torch.manual_seed(0)
    return {"c1.weight": torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]),
            "c1.bias": torch.tensor([1.0, 2.0, 3.0, 4.0]),
            "c2.weight": torch.tensor([[5.0] * 4, [6.0] * 4, [7.0] * 4, [0.1] * 4]),
            "fc.weight": torch.ones(2, 4)}


def _kept_magnitude(params: dict[str, torch.Tensor], masks: pc.Masks) -> float:
    return float(sum(p.abs().sum() for p in pc.apply_masks(params, masks).values()))


def test_budget_counts_the_next_layer_and_the_previous_layers_choice() -> None:
    # budget int(0.25 * 32) = 8 weights. Iteration 0: c1 relates 8 + 16 (c2), c2 relates 16 + 8 (fc),
    # both 8/24; pruning c2's row of 0.1 keeps the most magnitude. Iteration 1: c1 relates
    # 8 + c2's 12 kept = 20 (0.4: its row of 1s and bias 1 go); c2 is at 0.25 and relates 16 + 8,
    # so 0.25 + 8/24 (2 rows: the row of 5s would go), so c1.
    r = netadapt(_params(), ["c1.weight", "c2.weight"], 0.5, evaluate=_kept_magnitude, chain=CHAIN, step=0.25)
    assert [s.chosen.layer for s in r.history if s.chosen] == ["c2.weight", "c1.weight"]
    assert [[c.sparsity for c in s.candidates] for s in r.history] == [
        pytest.approx([1 / 3, 1 / 3]), pytest.approx([0.4, 0.25 + 1 / 3])]
    assert r.sparsities == pytest.approx({"c2.weight": 1 / 3, "c1.weight": 0.4})
    assert r.masks["c2.weight"].keep.flatten().tolist() == [True, True, True, False]
    assert r.masks["c1.weight"].keep.flatten().tolist() == [False, True, True, True]
    assert r.sparsity == 0.5 and [s.budget for s in r.history] == [8, 8]
    assert r.score == pytest.approx(_kept_magnitude(_params(), r.masks))


def test_the_previous_layers_sparsity_shrinks_the_next_ones_budget_share() -> None:
    # prefer pruning c1 first: then c2's related weights are 16 * (1 - 1/3) + 8 in iteration 1
    def prefer_c1(params: dict[str, torch.Tensor], masks: pc.Masks) -> float:
        return -masks["c1.weight"].keep.sum().item() if "c1.weight" in masks else -4.0

    r = netadapt(_params(), ["c1.weight", "c2.weight"], 0.5, evaluate=prefer_c1, chain=CHAIN, step=0.25)
    assert r.history[1].candidates[1].sparsity == pytest.approx(8 / (16 * (1 - 1 / 3) + 8))
    assert r.history[0].chosen is not None and r.history[0].chosen.layer == "c1.weight"
    # filter pruning prunes the bias of each pruned filter; the carried params are masked
    assert r.masks["c1.bias"].keep.tolist() == r.masks["c1.weight"].keep.flatten().tolist()
    assert float(r.params["c1.bias"][~r.masks["c1.bias"].keep].abs().sum()) == 0.0


def test_fine_tune_gets_masked_copies_and_its_weights_carry_on() -> None:
    seen: list[float] = []

    def fine_tune(params: dict[str, torch.Tensor], masks: pc.Masks) -> dict[str, torch.Tensor]:
        seen.append(float(pc.apply_masks(params, masks)["c2.weight"].sum() - params["c2.weight"].sum()))
        params["c2.weight"].add_(1.0)  # in place, on its own copies
        return params

    original = _params()
    before = {n: t.clone() for n, t in original.items()}
    r = netadapt(original, ["c2.weight"], 0.2, evaluate=_kept_magnitude, fine_tune=fine_tune, chain=CHAIN, step=0.25)
    assert seen == [0.0]  # already masked when fine_tune sees them
    assert all(torch.equal(original[n], before[n]) for n in before)  # inputs untouched
    expected = pc.apply_masks({"w": before["c2.weight"] + 1.0}, {"w": r.masks["c2.weight"]})["w"]
    assert torch.equal(r.params["c2.weight"], expected)  # fine-tuned, then masked again


def test_minimize_picks_the_lowest_score() -> None:
    r = netadapt(_params(), ["c1.weight", "c2.weight"], 0.2, evaluate=_kept_magnitude, chain=CHAIN, step=0.25,
                 maximize=False)
    assert r.history[0].chosen is not None and r.history[0].chosen.layer == "c1.weight"  # c1 drops magnitude 2+1


def test_level_metric_leaves_biases_dense() -> None:
    r = netadapt(_params(), ["c1.weight"], 0.2, evaluate=_kept_magnitude, metric=pc.level, chain=CHAIN, step=0.25,
                 biases=False)
    assert set(r.masks) == {"c1.weight"} and int(r.masks["c1.weight"].kept()) == 8 - int(8 * r.sparsities["c1.weight"])


def test_no_layer_can_prune_the_budget_halves_it_then_stops_with_a_warning() -> None:
    params = {"a.weight": torch.arange(1.0, 5.0).view(2, 2)}
    with pytest.warns(RuntimeWarning, match="no layer can remove another weight"):
        r = netadapt(params, ["a.weight"], 0.9, evaluate=_kept_magnitude, metric=pc.level, step=0.8)
    # the first budget (3 of 4 weights) is pruned; then 0.75 + 3/4 and 0.75 + 1/4 reach 1; budget 0
    assert isinstance(r, NetAdaptResult) and r.sparsity == pytest.approx(0.8)
    assert [s.chosen is None for s in r.history] == [False, True, True]
    assert [s.budget for s in r.history] == [3, 3, 1]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sparsity": 1.0}, ValueError, "sparsity must be in"),
    ({"step": 0.0}, ValueError, "step must be in"),
    ({"targets": ["c1.weight"], "chain": ["c2.weight"]}, ValueError, "not in chain"),
    ({"targets": ["nope.weight"]}, KeyError, "not in params"),
])
def test_bad_arguments_say_what_is_wrong(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"targets": ["c1.weight"], "sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        netadapt(_params(), args.pop("targets"), args.pop("sparsity"), evaluate=_kept_magnitude, **args)
