"""Activation quantization as a graph transform: no hooks on the user's modules, one compiled graph
per training step, safe from several threads, and the same numbers as the hook path it replaces."""

from __future__ import annotations

import logging
import threading
from typing import Any

import attrs
import optree
import pytest
import torch
from torch import Tensor, nn
from torch.func import grad

import purecompress.quant as pq
from purecompress._pytree import NAMESPACE, trees_equal

CFG = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]},
       {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU"]}]

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """Conv + BN + ReLU twice, a functional residual, dropout by flag, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = x + self.relu2(self.bn2(self.conv2(x)))
        if scale is not None:
            x = x * scale
        x = nn.functional.dropout(nn.functional.max_pool2d(x, 2), 0.5, training=self.training)
        return self.fc(torch.flatten(x, 1))


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _setup(model: nn.Module) -> tuple[pq.QuantTransform, pq.QuantTransform, dict[str, Tensor]]:
    q = pq.qat(model, CFG, warn=False)
    assert q.sites is not None
    return q, attrs.evolve(q, sites=None), {k: v.detach().clone() for k, v in model.named_parameters()}


def _steps(q: pq.QuantTransform, model: nn.Module, params: dict[str, Tensor], xs: list[Tensor],
           **kwargs: Tensor) -> list[tuple[dict[str, Tensor], Tensor, pq.QuantState, dict[str, Tensor]]]:
    """SGD steps: per step the gradients, the loss, the state and the BN running statistics."""
    params = {k: v.clone().requires_grad_() for k, v in params.items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    state, out = q.init(params), []
    for x in xs:
        torch.manual_seed(1)  # the same dropout mask on both paths
        y, state = q(model, {**params, **buffers}, state, x, kwargs)
        value = y.square().mean()
        grads = dict(zip(params, torch.autograd.grad(value, list(params.values()))))
        out.append((grads, value.detach(), state, {k: v.clone() for k, v in buffers.items()}))
        with torch.no_grad():
            params = {k: (v - 0.1 * grads[k]).requires_grad_() for k, v in params.items()}
        _, state = q.update(params, state)
    return out


@pytest.mark.parametrize("make", [Net, _mlp], ids=["conv-bn-residual", "mlp"])
def test_graph_path_equals_hook_path_bit_for_bit(make: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = make()
    graph_q, hook_q, params = _setup(model)
    shape = (4, 3, 8, 8) if isinstance(model, Net) else (4, 16)
    xs = [torch.randn(shape) for _ in range(3)]
    for g, h in zip(_steps(graph_q, model, params, xs), _steps(hook_q, model, params, xs)):
        assert trees_equal(g, h)
    model.eval()  # eval mode: another trace (the dropout flag is baked into a graph), same numbers
    for g, h in zip(_steps(graph_q, model, params, xs[:1]), _steps(hook_q, model, params, xs[:1])):
        assert trees_equal(g, h)


def test_no_hook_and_no_swapped_tensor_on_the_users_modules_during_the_call() -> None:
    torch.manual_seed(0)
    model = Net()
    q, _, params = _setup(model)
    weight = model.conv1.weight
    seen = []
    conv1 = model.conv1
    conv1.register_forward_hook(
        lambda m, i, o: seen.append((len(conv1._forward_pre_hooks), conv1.weight is weight, m is conv1)))
    q(model, {k: v + 1 for k, v in params.items()}, q.init(params), torch.randn(2, 3, 8, 8))
    assert seen == [(0, True, False)]  # the user's hook ran (on the graph's copy), nothing was put on conv1


def _assert_one_graph_equal_to_eager(step: Any, *args: Any) -> None:
    """``step`` compiles to one graph with no break, and the compiled results equal the eager ones."""
    explained = torch._dynamo.explain(step)(*args)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    for c, e in zip(optree.tree_leaves(compiled, namespace=NAMESPACE), optree.tree_leaves(eager, namespace=NAMESPACE),
                    strict=True):
        torch.testing.assert_close(c, e, rtol=0, atol=1e-6)


def test_whole_compiled_qat_training_step_is_one_graph() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    q, _, params = _setup(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(4, 3, 8, 8)

    def loss(p: dict[str, Tensor], s: pq.QuantState) -> tuple[Tensor, pq.QuantState]:
        y, s = q(model, {**p, **buffers}, s, x)
        return nn.functional.cross_entropy(y, torch.arange(4)), s

    step = grad(loss, has_aux=True)  # forward, loss and backward in one function
    model.eval()  # no dropout: the compiled and eager runs draw no random numbers
    state = q.init(params)
    _assert_one_graph_equal_to_eager(step, params, state)


@pytest.mark.parametrize("path", ["graph", "hooks"])
def test_concurrent_calls_from_two_threads_give_the_single_thread_results(path: str) -> None:
    torch.manual_seed(0)
    model = _mlp()
    graph_q, hook_q, params = _setup(model)
    q = graph_q if path == "graph" else hook_q  # the hook fallback serializes its calls
    xs = [[torch.randn(8, 16) for _ in range(3)] for _ in range(2)]
    expected = [_steps(q, model, params, x) for x in xs]
    results: list[object] = [None, None]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = [_steps(q, model, params, xs[i]) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert all(trees_equal(run, expected[i]) for run in results[i])  # type: ignore[union-attr]


def test_optional_arguments_given_or_not_each_get_their_graph() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    graph_q, hook_q, params = _setup(model)
    x, scale = torch.randn(2, 3, 8, 8), torch.tensor(0.5)
    for kwargs in ({}, {"scale": scale}):
        g, _ = graph_q(model, params, graph_q.init(params), x, kwargs)
        h, _ = hook_q(model, params, hook_q.init(params), x, kwargs)
        assert torch.equal(g, h)
    g, _ = graph_q(model, params, graph_q.init(params), (x, scale))
    assert torch.equal(g, h)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.fc1(x))
        if x.sum() > 0:  # data-dependent: fx cannot trace it
            x = x * 2
        return self.fc2(x)


def test_untraceable_forward_falls_back_to_hooks_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = Branchy()
    x = torch.randn(3, 4)
    with caplog.at_level(logging.INFO, logger="purecompress.quant"):
        graph_q, hook_q, params = _setup(model)
        g, gs = graph_q(model, params, graph_q.init(params), x)
    assert "temporary hooks" in caplog.text and "cannot trace" in caplog.text
    h, hs = hook_q(model, params, hook_q.init(params), x)
    assert torch.equal(g, h) and trees_equal(gs, hs)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_replaced_submodule_is_used_not_the_traced_one() -> None:
    torch.manual_seed(0)
    model = _mlp()
    q, hook_q, params = _setup(model)
    x = torch.randn(3, 16)
    q(model, params, q.init(params), x)  # traced
    model[3] = nn.Tanh()  # the ReLU the plan selected is gone from the tree: hooks, on what is there
    g, _ = q(model, params, q.init(params), x)
    assert torch.equal(g, hook_q(model, params, hook_q.init(params), x)[0])
    assert torch.equal(g, model(x)) is False  # still quantized (weights and inputs)


def test_a_weight_only_compiled_qat_step_is_one_graph() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _mlp()
    q = pq.qat(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}], warn=False)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(4, 16)

    def loss(p: dict[str, Tensor], s: pq.QuantState) -> tuple[Tensor, pq.QuantState]:
        y, s = q(model, p, s, x)
        return y.square().mean(), s

    step = grad(loss, has_aux=True)
    state = q.init(params)
    _assert_one_graph_equal_to_eager(step, params, state)


def test_the_compiled_relu_before_a_site_has_relus_values_and_gradients() -> None:
    from purecompress.quant._sites import _relu

    a = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0, float("nan"), float("-inf"), float("inf")])
    g = torch.randn(a.shape)
    g[4], g[5] = float("inf"), float("nan")  # passed through at 3.0 and at the NaN input

    def value_and_grad(relu: Any, a: Tensor) -> tuple[Tensor, Tensor]:
        y, vjp = torch.func.vjp(relu, a)
        return y, vjp(g)[0]

    expected = value_and_grad(torch.relu, a)
    compiled = torch.compile(lambda a: value_and_grad(_relu, a), backend="aot_eager", fullgraph=True)(a)
    for c, e in zip(compiled, expected, strict=True):
        torch.testing.assert_close(c, e, rtol=0, atol=0, equal_nan=True)
    vmapped = torch.compile(torch.vmap(_relu), backend="aot_eager")(a.reshape(2, 4))
    assert torch.equal(vmapped.reshape(-1).nan_to_num(), torch.relu(a).nan_to_num())


class _Relus(nn.Module):
    """The three ways to write a ReLU before a quantized Linear, one in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.fc3, self.fc4 = (nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 8),
                                                            nn.Linear(8, 8), nn.Linear(8, 4))

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc2(self.act(self.fc1(x)))
        x = self.fc3(torch.relu(x))
        return self.fc4(nn.functional.relu(x, inplace=True))


def test_relus_read_only_by_a_site_are_replaced_and_compiled_steps_equal_eager() -> None:
    from purecompress.quant._sites import _relu

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Relus()
    q = pq.qat(model, [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]}], warn=False)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(6, 8)
    state = q.init(params)
    q(model, params, state, x)
    assert q.sites is not None
    entries = [e for e in q.sites._entries.values() if e is not None]
    assert entries
    for entry in entries:  # each of the three ReLUs, the in-place ones too, only feeds a site
        assert sum(n.target is _relu for n in entry.gm.graph.nodes) == 3
        (act,) = entry.inlined  # the graph's shell of model.act: it shares the module's hook dicts
        assert type(act) is nn.ReLU and act._forward_hooks is model.act._forward_hooks

    def loss(p: dict[str, Tensor], s: pq.QuantState) -> tuple[Tensor, pq.QuantState]:
        y, s = q(model, p, s, x)
        return y.square().mean(), s

    _assert_one_graph_equal_to_eager(grad(loss, has_aux=True), params, state)


def test_a_hook_put_later_on_a_replaced_relu_runs() -> None:
    torch.manual_seed(0)
    model = _Relus()
    q = pq.qat(model, [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]}], warn=False)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(6, 8)
    before, _ = q(model, params, q.init(params), x)  # traced: model.act became the graph's ReLU
    seen = []
    model.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    after, _ = q(model, params, q.init(params), x)
    assert seen == [(6, 8)]
    assert torch.equal(before, after)
