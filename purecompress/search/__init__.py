"""Sparsity-allocation search: simulated annealing, NetAdapt, AMC's DDPG agent, FLOPs/params counting."""

from __future__ import annotations

from purecompress.search.amc import (
    AmcLayer,
    AmcResult,
    amc_episodes,
    amc_layers,
    amc_search,
    correct_action,
    layer_embeddings,
)
from purecompress.search.annealing import Annealer, AnnealResult, AnnealState, anneal_sparsities, rescale_to_budget
from purecompress.search.counting import Counts, LayerCount, count_flops_params, with_masks
from purecompress.search.ddpg import DDPG, DDPGConfig
from purecompress.search.net_adapt import NetAdaptCandidate, NetAdaptResult, NetAdaptStep, netadapt

__all__ = [
    "DDPG",
    "AmcLayer",
    "AmcResult",
    "AnnealResult",
    "AnnealState",
    "Annealer",
    "Counts",
    "DDPGConfig",
    "LayerCount",
    "NetAdaptCandidate",
    "NetAdaptResult",
    "NetAdaptStep",
    "amc_episodes",
    "amc_layers",
    "amc_search",
    "anneal_sparsities",
    "correct_action",
    "count_flops_params",
    "layer_embeddings",
    "netadapt",
    "rescale_to_budget",
    "with_masks",
]
