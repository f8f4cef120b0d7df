"""Example tests of the records: Block, blocks_of/unblock/expand_blocks, Metric, Mask, pytrees."""

from __future__ import annotations

import optree
import pytest
import torch
import torch.utils._pytree as torch_pytree

import purecompress as pc
from purecompress._pytree import tree_map
from purecompress.pruning._records import blocks_of, expand_blocks, unblock

# ----- Block ---------------------------------------------------------------------------------


def test_block_channel_and_element_grids() -> None:
    assert pc.Block.channel().grid((64, 32, 3, 3)) == (64, 1, 1, 1)
    assert pc.Block.channel(1).grid((64, 32, 3, 3)) == (1, 32, 1, 1)
    assert pc.Block.element().grid((4, 5)) == (4, 5)
    assert pc.Block.channel().grid((7,)) == (7,)  # 1-D params: one block per entry


def test_block_front_and_back_padding_follow_nni_scaling() -> None:
    assert pc.Block((2, 3)).sizes((4, 6)) == (2, 3)
    assert pc.Block((5,)).grid((10, 10)) == (10, 2)  # front: leading dims element-wise
    assert pc.Block((5,), "back").grid((10, 10)) == (2, 1)  # back: trailing dims whole


def test_block_reduce_matches_nni_scaling_example() -> None:
    t = torch.arange(24.0).view(4, 6)
    assert torch.equal(pc.Block((2, 3)).reduce(t, lambda b: b.mean(-1)), torch.tensor([[4.0, 7.0], [16.0, 19.0]]))


@pytest.mark.parametrize("kernel", [(0,), (-2,), (1.5,), (True,), (2, False)])
def test_block_rejects_bad_kernels(kernel: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="positive ints or -1"):
        pc.Block(kernel)  # type: ignore[arg-type]


def test_block_rejects_bad_padding() -> None:
    with pytest.raises(ValueError):
        pc.Block((1,), "middle")  # type: ignore[arg-type]


def test_blocks_that_do_not_tile_raise_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"do not tile a parameter of shape \(4, 6\)"):
        pc.Block((3, 3)).grid((4, 6))
    with pytest.raises(ValueError, match="more dims"):
        pc.Block((1, 1, 1)).grid((4, 6))
    with pytest.raises(ValueError, match=r"shape \(0, 6\) has a zero-size dim"):
        pc.Block.channel().grid((0, 6))


# ----- block views -----------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "grid"), [((4, 6), (2, 2)), ((4, 6), (4, 1)), ((6,), (3,)), ((2, 3, 4), (1, 3, 2)),
                                             ((1,), (1,))])
def test_blocks_of_and_unblock_are_inverse(shape: tuple[int, ...], grid: tuple[int, ...]) -> None:
    t = torch.arange(float(torch.Size(shape).numel())).view(shape)
    blocks = blocks_of(t, grid)
    assert tuple(blocks.shape[:-1]) == grid
    assert torch.equal(unblock(blocks, shape), t)
    # every block holds exactly the elements of its tile
    sizes = [n // g for n, g in zip(shape, grid)]
    first = t[tuple(slice(0, s) for s in sizes)].flatten()
    assert torch.equal(blocks.reshape(-1, blocks.shape[-1])[0], first)


def test_unblock_inverts_banks() -> None:
    t = torch.arange(12.0).view(3, 4)
    assert torch.equal(unblock(blocks_of(t, (3, 2)), (3, 4)), t)


def test_expand_blocks_is_a_view_when_broadcastable() -> None:
    keep = torch.tensor([[True], [False]])
    assert expand_blocks(keep, (2, 3)) is keep
    grid = torch.tensor([[True, False]])
    assert torch.equal(expand_blocks(grid, (2, 4)), torch.tensor([[True, True, False, False]] * 2))


# ----- Metric and Mask -------------------------------------------------------------------------


def test_metric_block_properties() -> None:
    m = pc.Metric(torch.zeros(4, 1, 1, 1), (4, 2, 3, 3))
    assert m.block == (1, 2, 3, 3) and m.block_numel == 18


def test_mask_dense_keeps_everything() -> None:
    mask = pc.Mask.dense((3, 4))
    assert mask.keep.shape == (1, 1) and int(mask.kept()) == 12 and mask.sparsity() == 0.0
    assert torch.equal(mask.to_dense(), torch.ones(3, 4))


def test_mask_from_dense_and_to_dense_nni_float_format() -> None:
    dense = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = pc.Mask.from_dense(dense)
    assert mask.keep.dtype == torch.bool and mask.block == (1, 1)
    out = mask.to_dense()
    assert out.dtype == torch.float32 and torch.equal(out, dense)
    assert mask.to_dense(torch.float64).dtype == torch.float64


def test_channel_mask_broadcasts_without_a_full_copy() -> None:
    mask = pc.Mask(torch.tensor([True, False, True]).view(3, 1, 1, 1), (3, 2, 2, 2))
    assert mask.broadcastable().shape == (3, 1, 1, 1)
    w = torch.ones(3, 2, 2, 2)
    assert mask.apply(w).sum() == 16
    assert mask.sparsity() == pytest.approx(1 / 3)
    assert int(mask.kept()) == 16


def test_mask_apply_accepts_leading_batch_dims_and_rejects_other_shapes() -> None:
    mask = pc.Mask(torch.tensor([True, False]), (2,))
    assert torch.equal(mask.apply(torch.ones(3, 2)), torch.tensor([[1.0, 0.0]] * 3))
    with pytest.raises(ValueError, match=r"mask for shape \(2,\) applied to a tensor of shape \(3,\)"):
        mask.apply(torch.ones(3))
    with pytest.raises(ValueError):
        mask.apply(torch.tensor(1.0))


def test_mask_apply_is_differentiable_and_new() -> None:
    w = torch.ones(2, 2, requires_grad=True)
    mask = pc.Mask(torch.tensor([[True], [False]]), (2, 2))
    out = mask.apply(w)
    out.sum().backward()
    assert torch.equal(w.grad, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert out.data_ptr() != w.data_ptr()


def test_mask_apply_keeps_dtype() -> None:
    mask = pc.Mask(torch.tensor([True, False]), (2,))
    assert mask.apply(torch.ones(2, dtype=torch.float16)).dtype == torch.float16
    assert mask.apply(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


def test_one_element_mask() -> None:
    mask = pc.Mask(torch.tensor([False]), (1,))
    assert mask.sparsity() == 1.0 and int(mask.kept()) == 0


def test_mask_and_with_nested_grids() -> None:
    channel = pc.Mask(torch.tensor([True, False]).view(2, 1), (2, 4))
    blocks = pc.Mask(torch.tensor([[True, False], [True, True]]), (2, 4))  # blocks of 1x2
    both = channel & blocks
    assert both.keep.shape == (2, 2)
    assert torch.equal(both.to_dense(), torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal((blocks & channel).to_dense(), both.to_dense())
    assert torch.equal((pc.Mask.dense((2, 4)) & blocks).to_dense(), blocks.to_dense())


def test_mask_and_with_grids_that_do_not_nest_uses_their_lcm() -> None:
    # Found by properties/test_mask_laws.py: (2,) and (3,) blocks of a (6,) param used to raise.
    a = pc.Mask(torch.tensor([True, False]), (6,))
    b = pc.Mask(torch.tensor([True, False, True]), (6,))
    both = a & b
    assert both.keep.shape == (6,)
    assert torch.equal(both.to_dense(), torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))


def test_mask_and_rejects_different_shapes() -> None:
    with pytest.raises(ValueError, match="cannot combine masks"):
        pc.Mask.dense((2, 3)) & pc.Mask.dense((3, 2))


# ----- pytrees ---------------------------------------------------------------------------------


def test_records_are_pytree_nodes_with_static_shapes() -> None:
    mask = pc.Mask(torch.tensor([True, False]), (2,))
    leaves, spec = optree.tree_flatten(mask, namespace=pc.NAMESPACE)
    assert len(leaves) == 1 and leaves[0] is mask.keep
    leaves_t, spec_t = torch_pytree.tree_flatten(mask)
    assert leaves_t == [mask.keep]
    back = torch_pytree.tree_unflatten(leaves_t, spec_t)
    assert isinstance(back, pc.Mask) and back.shape == (2,) and back == mask


def test_tree_map_reaches_record_tensors() -> None:
    metrics = {"w": pc.Metric(torch.tensor([1.0, 2.0]), (2,))}
    doubled = tree_map(lambda t: t * 2, metrics)
    assert torch.equal(doubled["w"].score, torch.tensor([2.0, 4.0])) and doubled["w"].shape == (2,)


def test_record_equality_and_hash() -> None:
    a = pc.Mask(torch.tensor([True]), (1,))
    assert a == pc.Mask(torch.tensor([True]), (1,))
    assert a != pc.Mask(torch.tensor([False]), (1,))
    assert a != pc.Mask(torch.tensor([True]), (1,)).keep
    assert a != pc.Metric(torch.tensor([1.0]), (1,))
    with pytest.raises(TypeError):
        hash(a)


def test_trees_equal_compares_dtype_and_structure() -> None:
    assert pc.trees_equal({"a": torch.ones(2)}, {"a": torch.ones(2)})
    assert not pc.trees_equal({"a": torch.ones(2)}, {"a": torch.ones(2, dtype=torch.float64)})
    assert not pc.trees_equal({"a": torch.ones(2)}, {"b": torch.ones(2)})
    assert not pc.trees_equal({"a": torch.ones(2)}, {"a": 1.0})
    assert pc.trees_equal({"a": 1, "b": None}, {"a": 1, "b": None})


def test_records_are_frozen() -> None:
    mask = pc.Mask.dense((2,))
    with pytest.raises(AttributeError):
        mask.shape = (3,)  # type: ignore[misc]


def test_mask_sees_an_in_place_edit_of_keep_after_being_applied() -> None:
    """Issue 10: an edit of ``keep`` after one apply must not leave a stale multiplier (12.0 vs 9.0)."""
    mask = pc.Mask(torch.ones(4, 1, dtype=torch.bool), (4, 3))
    w = torch.ones(4, 3)
    assert pc.apply_masks({"w": w}, {"w": mask})["w"].sum().item() == 12.0
    mask.keep[0] = False
    assert pc.apply_masks({"w": w}, {"w": mask})["w"].sum().item() == 9.0
    mask.keep.view(-1)[1] = False  # through a view: the version counter is shared
    assert pc.apply_masks({"w": w}, {"w": mask})["w"].sum().item() == 6.0


def test_mask_applied_from_two_threads_with_different_dtypes_gives_each_its_dtype() -> None:
    import threading

    mask = pc.Mask(torch.rand(64, 64) > 0.5, (64, 64))
    errors: list[str] = []

    def worker(dtype: torch.dtype) -> None:
        w = torch.ones(64, 64, dtype=dtype)
        expected = mask.keep.to(dtype)
        for _ in range(300):
            out = mask.apply(w)
            if out.dtype != dtype or not torch.equal(out, expected):
                errors.append(f"{dtype}: got {out.dtype}")
                return

    threads = [threading.Thread(target=worker, args=(d,)) for d in (torch.float32, torch.float64) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_mask_fields_never_change_and_rebuilt_records_start_with_an_empty_memo() -> None:
    mask = pc.Mask(torch.tensor([[True], [False]]), (2, 3))
    keep = mask.keep
    mask.apply(torch.ones(2, 3))
    assert mask.keep is keep and mask.shape == (2, 3)
    rebuilt = torch_pytree.tree_map(lambda t: t, mask)
    assert rebuilt == mask and rebuilt._multipliers == {}


def test_mask_apply_under_inference_mode() -> None:
    with torch.inference_mode():
        mask = pc.Mask(torch.tensor([[True], [False]]), (2, 3))
        assert mask.apply(torch.ones(2, 3)).sum().item() == 3.0
