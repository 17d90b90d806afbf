import pytest
import torch

from detcon.model import binary_masks, mask_pool


def _slow_pool(features, cell_ids, mask_ids):
    """From the definition: the mean of feature vectors over cells carrying the id, else 0."""
    b, c, h, w = features.shape
    out = torch.zeros(b, mask_ids.shape[1], c, dtype=torch.float64)
    for i in range(b):
        for k in range(mask_ids.shape[1]):
            cells = [
                features[i, :, y, x].double()
                for y in range(h)
                for x in range(w)
                if cell_ids[i, y, x] == mask_ids[i, k]
            ]
            if cells:
                out[i, k] = torch.stack(cells).mean(0)
    return out


def test_hand_computed_case():
    # 1 image, 2 channels, 2x2 grid; ids [[0, 1], [1, 1]]
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])
    cells = torch.tensor([[[0, 1], [1, 1]]])
    ids = torch.tensor([[1, 0, 7, 1]])
    out = mask_pool(feats, cells, ids)
    expected = torch.tensor([[[3.0, 30.0], [1.0, 10.0], [0.0, 0.0], [3.0, 30.0]]])
    assert out.shape == (1, 4, 2)
    assert torch.allclose(out, expected)


def test_matches_slow_reference_with_absent_and_duplicate_ids():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 4, 3, generator=g)
    cells = torch.randint(0, 4, (3, 4, 3), generator=g)
    ids = torch.randint(0, 6, (3, 8), generator=g)  # ids 4, 5 never occur in cells
    ids[0, :2] = torch.tensor([5, 5])  # absent id, duplicated
    ids[1, 3:5] = cells[1, 0, 0]  # present id, duplicated
    out = mask_pool(feats, cells, ids)
    ref = _slow_pool(feats, cells, ids)
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.all(out[0, :2] == 0)
    assert torch.equal(out[1, 3], out[1, 4])


def test_binary_masks_row_major_and_exhaustive():
    cells = torch.tensor([[[0, 1, 2], [2, 2, 0]]])
    ids = torch.tensor([[0, 1, 2, 3]])
    masks = binary_masks(cells, ids)
    assert masks.dtype == torch.float32 and masks.shape == (1, 4, 6)
    assert masks[0].tolist() == [
        [1, 0, 0, 0, 0, 1],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]


def test_gradients_flow_to_features():
    feats = torch.randn(2, 3, 2, 2, requires_grad=True)
    cells = torch.tensor([[[0, 0], [0, 1]], [[1, 1], [1, 1]]])
    mask_pool(feats, cells, torch.tensor([[0], [1]])).sum().backward()
    # image 0: id 0 owns 3 cells (grad 1/3 each), the id-1 cell gets nothing; image 1: 1/4 each
    assert torch.allclose(feats.grad[0, 0], torch.tensor([[1 / 3, 1 / 3], [1 / 3, 0.0]]))
    assert torch.allclose(feats.grad[1], torch.full((3, 2, 2), 0.25))


def test_pooling_runs_in_float32_under_autocast():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 4, 4, generator=g)
    cells = torch.randint(0, 3, (2, 4, 4), generator=g)
    ids = torch.randint(0, 3, (2, 5), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mask_pool(feats, cells, ids)
        out_bf16_in = mask_pool(feats.bfloat16(), cells, ids)
    assert out.dtype == torch.float32 and out_bf16_in.dtype == torch.float32
    # fp32 features under autocast: exactly the fp32 result (no bf16 matmul inside)
    assert torch.equal(out, mask_pool(feats, cells, ids))
    # bf16 features: averaged in fp32, so only the input rounding remains
    assert torch.allclose(out_bf16_in, mask_pool(feats.bfloat16().float(), cells, ids), atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    feats = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="feature grid"):
        mask_pool(
            feats, torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
        )
    with pytest.raises(TypeError, match="integer"):
        mask_pool(feats, torch.zeros(2, 4, 4), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch mismatch"):
        mask_pool(
            feats, torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long)
        )
    with pytest.raises(ValueError, match=r"\[B,K\]"):
        mask_pool(feats, torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long))
