"""Block-by-block calibration: compressed outputs feed the next block, the model is never written,
memory is one block's, and it runs on bfloat16/float16 models with float32 statistics."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import purecompress as pc
from purecompress import llm

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = llm.DecoderConfig(dim=32, layers=2, heads=2, hidden=64)


def _model(layers: int = 2, seed: int = 0) -> llm.TinyDecoder:
    torch.manual_seed(seed)
    return llm.TinyDecoder(llm.DecoderConfig(dim=32, layers=layers, heads=2, hidden=64)).eval()


def _calib(samples: int = 8, seq_len: int = 16) -> list[Tensor]:
    return llm.calibration_batches(torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(1)),
                                   samples=samples, seq_len=seq_len, batch=4)


RUNS = {
    "wanda": lambda model, calib: llm.wanda(model, calib, sparsity=0.5),
    "wanda_2of4": lambda model, calib: llm.wanda(model, calib, n_m="2:4"),
    "sparsegpt": lambda model, calib: llm.sparsegpt(model, calib, sparsity=0.5),
    "sparsegpt_2of4": lambda model, calib: llm.sparsegpt(model, calib, n_m=(2, 4)),
    "gptq": lambda model, calib: llm.gptq(model, calib, bits=4, group_size=16),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_the_model_and_its_tensors_are_not_written_and_no_hook_is_left(run: str) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = _calib()
    calib_before = [b.clone() for b in calib]
    result = RUNS[run](model, calib)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(calib, calib_before))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    targets = llm.linear_weights(model)
    assert sorted(result.masks or result.qparams) == sorted(targets)
    assert not any(torch.equal(result.params[t], before[t]) for t in targets)
    shared = result.params["embed_tokens.weight"]
    assert shared.data_ptr() == model.embed_tokens.weight.data_ptr()  # untouched params are shared, not copied


def test_each_block_is_calibrated_on_the_outputs_of_the_compressed_blocks_before_it() -> None:
    model, calib = _model(), _calib()
    full = llm.sparsegpt(model, calib, n_m="2:4")
    first = llm.sparsegpt(model, calib, n_m="2:4", blocks=["layers.0"])
    second = [n for n in llm.linear_weights(model) if n.startswith("layers.1.")]
    stats = llm.linear_stats(model, first.params, calib, [n.removesuffix(".weight") for n in second])
    for name in second:
        w, mask = llm.sparsegpt_prune(first.params[name], stats[name.removesuffix(".weight")].hessian, n_m="2:4")
        assert torch.equal(mask.keep, full.masks[name].keep)
        torch.testing.assert_close(w, full.params[name])
    dense_stats = llm.linear_stats(model, pc.params_of(model), calib, [n.removesuffix(".weight") for n in second])
    assert not torch.allclose(dense_stats["layers.1.mlp.down_proj"].hessian, stats["layers.1.mlp.down_proj"].hessian)


def test_wanda_masks_are_per_row_on_the_input_norms_of_the_compressed_prefix() -> None:
    model, calib = _model(), _calib()
    result = llm.wanda(model, calib, sparsity=0.5)
    first = llm.wanda(model, calib, sparsity=0.5, blocks=["layers.0"])
    name = "layers.1.mlp.down_proj"
    stats = llm.linear_stats(model, first.params, calib, [name], need="norms")[name]
    assert stats.hessian is None and stats.count == 8 * 16
    expected = llm.allocate_per_row({"w": llm.wanda_metric(model.layers[1].mlp.down_proj.weight, stats.sq_norm)}, 0.5)
    assert torch.equal(result.masks[f"{name}.weight"].keep, expected["w"].keep)
    assert torch.equal(result.params[f"{name}.weight"] == 0, ~expected["w"].keep)


def _all_linear_input_bytes(model: nn.Module, calib: list[Tensor]) -> int:
    """What holding every Linear layer's calibration inputs at once would take (the naive way)."""
    sizes: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.append(a[0].numel() * a[0].element_size()))
             for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for batch in calib:
            model(batch)
    for h in hooks:
        h.remove()
    return sum(sizes)


def test_peak_memory_is_one_blocks_whatever_the_depth() -> None:
    calib = _calib(samples=16, seq_len=32)
    shallow, deep = _model(layers=2), _model(layers=6)
    peak_shallow = llm.sparsegpt(shallow, calib).peak_bytes
    peak_deep = llm.sparsegpt(deep, calib).peak_bytes
    assert peak_shallow == peak_deep
    hidden = 16 * 32 * 32 * 4  # one block's inputs (float32 hidden states of every sample)
    hessians = 6 * 32 * 32 * 4 + 64 * 64 * 4  # six Linear layers of width 32, one of width 64
    assert peak_deep <= 2 * hidden + hessians + 8 * 32 * 4 + 64 * 4
    assert peak_deep < _all_linear_input_bytes(deep, calib) / 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("run", ["wanda_2of4", "sparsegpt", "gptq"])
def test_half_precision_models_keep_their_dtype_with_float32_statistics(dtype: torch.dtype, run: str) -> None:
    model, calib = _model().to(dtype), _calib()
    result = RUNS[run](model, calib)
    reference = RUNS[run](_model(), calib)
    for name in llm.linear_weights(model):
        assert result.params[name].dtype == dtype
        assert bool(result.params[name].isfinite().all())
        diff = torch.linalg.norm(result.params[name].float() - reference.params[name])
        assert diff < 0.15 * torch.linalg.norm(reference.params[name])  # half-precision activations flip near-ties
        if result.masks:
            agree = (result.masks[name].keep == reference.masks[name].keep).float().mean()
            assert agree > 0.9
    stats = llm.linear_stats(model.layers[0].mlp.up_proj, {"weight": model.layers[0].mlp.up_proj.weight},
                             [torch.ones(3, 32, dtype=dtype)], [""])[""]
    assert stats.hessian.dtype == stats.sq_norm.dtype == torch.float32


class _KwargsBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: Tensor, *, scale: Tensor) -> tuple[Tensor, None]:
        return x + self.fc(x) * scale, None  # Hugging Face layers return tuples in older versions


class _KwargsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.layers = nn.ModuleList(_KwargsBlock() for _ in range(3))

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x, scale=scale)[0]
        return x


def test_blocks_called_with_keyword_arguments_and_returning_tuples() -> None:
    torch.manual_seed(0)
    model = _KwargsModel()
    calib = [(torch.randn(5, 4), torch.tensor(0.5)) for _ in range(2)]
    assert llm.decoder_blocks(model) == ["layers.0", "layers.1", "layers.2"]
    result = llm.gptq(model, calib, bits=3)
    assert sorted(result.qparams) == [f"layers.{i}.fc.weight" for i in range(3)]
    assert "inp.weight" not in result.qparams
    stats = llm.linear_stats(model, result.params, calib, ["layers.2.fc"])["layers.2.fc"]
    expected, _ = llm.gptq_quantize(model.layers[2].fc.weight, stats.hessian, bits=3)
    torch.testing.assert_close(result.params["layers.2.fc.weight"], expected)


def test_errors_name_what_is_wrong() -> None:
    model, calib = _model(), _calib()
    with pytest.raises(ValueError, match="not modules"):
        llm.wanda(model, calib, blocks=["layers.9"])
    with pytest.raises(ValueError, match="no ModuleList named 'layers'"):
        llm.decoder_blocks(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="not a Linear"):
        llm.linear_stats(model, pc.params_of(model), calib, ["layers.0.input_layernorm"])


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = _model(), _calib(samples=4)
    llm.wanda(model, calib)
    assert "blocks" not in capsys.readouterr().err
    llm.wanda(model, calib, progress=True)
    assert "blocks" in capsys.readouterr().err
