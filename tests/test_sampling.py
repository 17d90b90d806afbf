"""Grid reduction (majority vote) and per-view mask id sampling."""

import time

import pytest
import torch

from detcon.masks import downsample_masks, sample_mask_ids


def reference_downsample(label_maps, grid):
    # Definition: per cell, count every id, keep the largest count, lowest id among ties.
    B, H, W = label_maps.shape
    gh, gw = grid
    ch, cw = H // gh, W // gw
    out = torch.empty(B, gh, gw, dtype=torch.long)
    for b in range(B):
        for i in range(gh):
            for j in range(gw):
                counts = {}
                for v in label_maps[b, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw].flatten():
                    counts[int(v)] = counts.get(int(v), 0) + 1
                best = max(counts.values())
                out[b, i, j] = min(k for k, c in counts.items() if c == best)
    return out


def test_hand_made_majority_and_ties():
    m = torch.tensor(
        [
            [5, 5, 1, 2],
            [5, 3, 2, 1],
            [7, 7, 0, 0],
            [9, 9, 0, 4],
        ]
    )[None]
    out = downsample_masks(m, (2, 2))
    # Cell (0,0): 5 wins 3-1. (0,1): 1 and 2 tie -> 1. (1,0): 7 and 9 tie -> 7. (1,1): 0 wins.
    assert out.tolist() == [[[5, 1], [7, 0]]]
    assert out.dtype == torch.long


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_matches_reference_all_int_dtypes(dtype):
    g = torch.Generator().manual_seed(0)
    m = torch.randint(0, 4, (2, 12, 8), generator=g).to(dtype)
    for grid in [(3, 2), (4, 4), (1, 1), (12, 8)]:
        assert torch.equal(downsample_masks(m, grid), reference_downsample(m, grid))


def test_large_ids_do_not_wrap():
    base = torch.tensor([[70000, 70000], [65536, 3]])
    m = base.repeat_interleave(2, 0).repeat_interleave(2, 1)[None].to(torch.int32)  # [1,4,4]
    out = downsample_masks(m, (2, 2))
    assert out.tolist() == [[[70000, 70000], [65536, 3]]]
    huge = torch.full((1, 2, 2), 2**40)
    huge[0, 0, 0] = 2**40 + 1
    assert downsample_masks(huge, 1).tolist() == [[[2**40]]]
    assert downsample_masks(huge, (1, 1)).tolist() == [[[2**40]]]


def test_downsample_errors():
    m = torch.zeros(1, 10, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="does not divide"):
        downsample_masks(m, (3, 5))
    with pytest.raises(ValueError, match="3-D"):
        downsample_masks(m[0], (2, 2))
    with pytest.raises(TypeError, match="integer"):
        downsample_masks(m.float(), (2, 2))
    with pytest.raises(ValueError, match="negative"):
        downsample_masks(m - 1, (2, 2))
    with pytest.raises(ValueError, match="positive"):
        downsample_masks(m, (0, 2))
    with pytest.raises(ValueError, match="pair of ints"):
        downsample_masks(m, (2.0, 2))


def test_downsample_speed_batch_of_224():
    m = torch.randint(0, 40, (32, 224, 224), dtype=torch.int32)
    start = time.perf_counter()
    out = downsample_masks(m, (7, 7))
    assert out.shape == (32, 7, 7)
    # About 0.15 s on one thread of a shared CPU; a loop over cells would take far longer.
    assert time.perf_counter() - start < 3.0


def test_sample_only_present_ids_and_determinism():
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 5, (6, 3, 3), generator=g) * 1000  # sparse, large ids
    cells[0] = 77  # one image with a single region
    ids = sample_mask_ids(cells, 16, torch.Generator().manual_seed(1))
    assert ids.shape == (6, 16) and ids.dtype == torch.long
    for b in range(6):
        assert set(ids[b].tolist()) <= set(cells[b].flatten().tolist())
    assert ids[0].tolist() == [77] * 16
    again = sample_mask_ids(cells, 16, torch.Generator().manual_seed(1))
    other_seed = sample_mask_ids(cells, 16, torch.Generator().manual_seed(2))
    assert torch.equal(ids, again)
    assert not torch.equal(ids, other_seed)


def test_sample_is_uniform_over_present_ids():
    # Region 0 covers 6 of 9 cells, regions 4 and 9 one cell each, region 2 one cell: still 1/4 each.
    cells = torch.tensor([[0, 0, 0], [0, 0, 0], [4, 9, 2]])[None].repeat(50, 1, 1)
    ids = sample_mask_ids(cells, 200, torch.Generator().manual_seed(3))  # 10000 draws
    counts = torch.stack([(ids == v).sum() for v in (0, 2, 4, 9)]).double()
    assert counts.sum() == ids.numel()
    expected = ids.numel() / 4
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.3  # chi-square, 3 dof, p = 0.001


def test_sample_both_views_mode():
    view_a = torch.tensor([[[1, 2], [3, 4]], [[5, 5], [6, 6]], [[7, 8], [7, 8]]])
    view_b = torch.tensor([[[2, 4], [9, 9]], [[0, 0], [0, 1]], [[8, 8], [8, 8]]])
    ids = sample_mask_ids(view_a, 64, torch.Generator().manual_seed(0), other=view_b)
    assert set(ids[0].tolist()) == {2, 4}  # common ids only, both drawn in 64 tries
    assert set(ids[1].tolist()) == {5, 6}  # nothing in common: falls back to own present ids
    assert set(ids[2].tolist()) == {8}
    # Official mode for comparison draws among all present ids of the view.
    plain = sample_mask_ids(view_a, 64, torch.Generator().manual_seed(0))
    assert set(plain[0].tolist()) == {1, 2, 3, 4}


def test_sample_errors():
    cells = torch.zeros(2, 3, 3, dtype=torch.long)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_masks"):
            sample_mask_ids(cells, bad)
    assert sample_mask_ids(cells, torch.tensor(2).numpy()[()]).shape == (2, 2)  # numpy int
    with pytest.raises(TypeError, match="integer"):
        sample_mask_ids(cells.float(), 4)
    with pytest.raises(ValueError, match="other"):
        sample_mask_ids(cells, 4, other=cells[:1])
    with pytest.raises(ValueError, match="negative"):
        sample_mask_ids(cells - 1, 4)
    # Default RNG works too.
    assert sample_mask_ids(cells, 3).tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_downsample_and_sample():
    m = torch.randint(0, 300, (4, 64, 64), dtype=torch.int32)
    cells = downsample_masks(m.cuda(), (8, 8))
    assert torch.equal(cells.cpu(), downsample_masks(m, (8, 8)))
    ids = sample_mask_ids(cells, 16, torch.Generator("cuda").manual_seed(0), other=cells.flip(0))
    assert ids.device.type == "cuda" and ids.shape == (4, 16)
    for b in range(4):
        assert set(ids[b].tolist()) <= set(cells[b].flatten().tolist())
    with pytest.raises(ValueError, match="generator"):
        sample_mask_ids(cells, 4, torch.Generator().manual_seed(0))
