"""A small DDPG agent (actor-critic with target networks and a replay buffer) for AMC.

Same hyper-parameters and defaults as NNI's ``ddpg_params``; our own implementation. The agent
is an object with its own networks and generator: seeding it never touches torch's global RNG.
"""

from __future__ import annotations

import copy

import attrs
import torch
from torch import Tensor, nn

__all__ = ["DDPG", "DDPGConfig"]


@attrs.frozen
class DDPGConfig:
    """NNI's ``ddpg_params`` (same names and defaults).

    Attributes:
        hidden1, hidden2: hidden widths; lr_c, lr_a: critic / actor learning rates.
        warmup: episodes of random actions; discount: Q target discount; bsize: batch size;
        rmsize: replay capacity (transitions); window_length: kept for NNI compatibility;
        tau: soft target update rate; init_delta, delta_decay: exploration noise and its decay;
        max_episode_length, epsilon: kept for NNI compatibility.
    """

    hidden1: int = 300
    hidden2: int = 300
    lr_c: float = 1e-3
    lr_a: float = 1e-4
    warmup: int = 100
    discount: float = 1.0
    bsize: int = 64
    rmsize: int = 100
    window_length: int = 1
    tau: float = 0.01
    init_delta: float = 0.5
    delta_decay: float = 0.99
    max_episode_length: float = 1e9
    epsilon: float = 50000


def _mlp(n_in: int, h1: int, h2: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, n_out))


class DDPG:
    """Deep deterministic policy gradient over a one-dimensional action in ``[0, 1]``.

    >>> agent = DDPG(3, DDPGConfig(hidden1=8, hidden2=8, bsize=4), seed=0)
    >>> 0.0 <= agent.select_action(torch.zeros(3), episode=0) <= 1.0
    True
    """

    def __init__(self, n_states: int, config: DDPGConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or DDPGConfig()
        c = self.config
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = nn.Sequential(_mlp(n_states, c.hidden1, c.hidden2, 1), nn.Sigmoid())
            self.critic = _mlp(n_states + 1, c.hidden1, c.hidden2, 1)
        self.actor_target = _copy(self.actor)
        self.critic_target = _copy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=c.lr_a)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=c.lr_c)
        self.memory: list[tuple[Tensor, float, float, Tensor, bool]] = []
        self.moving_average: float | None = None

    def random_action(self) -> float:
        """Uniform in ``[0, 1]`` (warm-up)."""
        return float(torch.rand((), generator=self.generator))

    def select_action(self, state: Tensor, episode: int) -> float:
        """The actor's action plus truncated normal noise decaying with ``episode``."""
        with torch.no_grad():
            mu = float(self.actor(state.float().reshape(1, -1)))
        sigma = self.config.init_delta * self.config.delta_decay ** (episode - self.config.warmup)
        for _ in range(100):  # truncated normal by rejection
            a = mu + sigma * float(torch.randn((), generator=self.generator))
            if 0.0 <= a <= 1.0:
                return a
        return min(1.0, max(0.0, mu))

    def observe(self, reward: float, state: Tensor, action: float, following: Tensor, done: bool) -> None:
        """Store a transition (oldest dropped beyond ``rmsize``)."""
        self.memory.append((state.float(), float(action), float(reward), following.float(), bool(done)))
        del self.memory[: max(0, len(self.memory) - self.config.rmsize)]

    def update_policy(self) -> None:
        """One critic and one actor step on a sampled batch, then soft target updates."""
        c = self.config
        index = torch.randint(len(self.memory), (c.bsize,), generator=self.generator).tolist()
        batch = [self.memory[i] for i in index]
        state = torch.stack([b[0] for b in batch])
        action = torch.tensor([[b[1]] for b in batch])
        reward = torch.tensor([[b[2]] for b in batch])
        following = torch.stack([b[3] for b in batch])
        not_done = torch.tensor([[0.0 if b[4] else 1.0] for b in batch])
        mean = float(reward.mean())
        self.moving_average = mean if self.moving_average is None else \
            self.moving_average + 0.5 * (mean - self.moving_average)
        reward = reward - self.moving_average
        with torch.no_grad():
            next_q = self.critic_target(torch.cat([following, self.actor_target(following)], 1))
            target = reward + c.discount * not_done * next_q
        critic_loss = nn.functional.mse_loss(self.critic(torch.cat([state, action], 1)), target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        actor_loss = -self.critic(torch.cat([state, self.actor(state)], 1)).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()
        _soft_update(self.actor_target, self.actor, c.tau)
        _soft_update(self.critic_target, self.critic, c.tau)


def _copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.mul_(1.0 - tau).add_(s, alpha=tau)
