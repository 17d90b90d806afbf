"""Pictures: distinct colours, legible size, --random, one renderer for show and masks.png."""

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.cli import main
from detcon.commands.show import pick
from detcon.data.viz import colour_labels, draw_batch, grid_cells, overlay, palette


def test_palette_has_no_repeats():
    colours = palette(300)
    assert colours.shape == (300, 3) and colours.min() >= 0 and colours.max() <= 1
    assert len(np.unique(np.round(colours, 6), axis=0)) == 300  # tab20 repeated after 20
    labels = np.arange(40).reshape(5, 8)
    assert len(np.unique(colour_labels(labels).reshape(-1, 3), axis=0)) == 40


def test_overlay_is_independent_of_the_view_colours():
    labels = np.array([[0, 0, 1], [0, 1, 1]])
    red = np.zeros((2, 3, 3))
    red[..., 0] = 1.0
    green = np.zeros((2, 3, 3))
    green[..., 1] = 0.299 / 0.587  # the same grey level as pure red
    assert np.allclose(overlay(red, labels), overlay(green, labels))
    assert (overlay(red, labels)[0, 1] == 1.0).all()  # a boundary pixel is white


def test_pick_first_or_seeded_random():
    assert pick(5, 2, False, 0) == [0, 1, 2, 3, 4]
    assert sorted(pick(5, 2, True, 0)) == [0, 1, 2, 3, 4]
    assert pick(50, 2, True, 1) == pick(50, 2, True, 1) != pick(50, 2, True, 2)
    assert pick(50, 2, True, 1) == np.random.default_rng(1).permutation(50).tolist()


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(6):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, 32:] = rng.integers(0, 255, 3)
        img[:24] += np.uint8(60)
        Image.fromarray(img).save(tmp_path / f"img{k}.png")
    return tmp_path


def test_show_is_legible_and_random(folder, tmp_path, capsys):
    out = tmp_path / "first.png"
    assert (
        main(
            [
                "show",
                str(folder),
                "--out",
                str(out),
                "--num",
                "2",
                "--image-size",
                "64",
                "--masks",
                "grid:2",
            ]
        )
        == 0
    )
    width, height = Image.open(out).size
    assert width >= 1000 and height >= 700  # three 3.4-inch panels at 100 dpi, two rows
    assert "masks: grid {'rows': 2, 'cols': 2}" in capsys.readouterr().out
    args = ["show", str(folder), "--num", "2", "--image-size", "64", "--masks", "slic:n_segments=4"]
    assert main([*args, "--out", str(tmp_path / "r1.png"), "--random", "--seed", "5"]) == 0
    assert main([*args, "--out", str(tmp_path / "r2.png"), "--random", "--seed", "5"]) == 0
    assert (tmp_path / "r1.png").read_bytes() == (tmp_path / "r2.png").read_bytes()
    with pytest.raises(SystemExit, match="unknown mask generator|neither a mask cache"):
        main([*args, "--out", str(tmp_path / "bad.png"), "--masks", "slick"])


def test_masks_png_uses_the_training_draws(tmp_path):
    """draw_batch dims exactly the cells whose ids the batch's mask_u uniforms select."""
    from detcon.masks import downsample_masks, sample_mask_ids

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, :, 32:] = 1
    mask[:, 32:, :] += 2  # four quadrants, ids 0..3
    batch = {
        "view_a": torch.randn(2, 3, 64, 64, generator=g),
        "view_b": torch.randn(2, 3, 64, 64, generator=g),
        "mask_a": mask,
        "mask_b": mask.flip(-1),
        "mask_u": torch.rand(2, 2, 3, generator=g),
        "index": torch.tensor([4, 7]),
    }
    cells, ids = grid_cells(mask[0], 2, 3, uniforms=batch["mask_u"][0, 0])
    ref = sample_mask_ids(downsample_masks(mask[:1], (2, 2)), 3, uniforms=batch["mask_u"][:1, 0])
    assert torch.equal(ids, ref[0]) and cells.tolist() == [[0, 1], [2, 3]]
    out = draw_batch(batch, tmp_path / "masks.png")
    assert Image.open(out).size[0] >= 650
