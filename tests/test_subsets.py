"""data.subset / data.fraction: matching, seeded fractions, the shipped ImageNet-100 list."""

import re

import numpy as np
import pytest
from PIL import Image

from detcon.config import ConfigError, load_config
from detcon.data import build_pretrain_dataset
from detcon.data.subsets import SubsetError, read_subset, select_indices, subset_file


def _tree(root, counts=None):
    """root/<class>/<k>.png, tiny images; returns the sorted file list."""
    counts = counts or {"a": 4, "b": 2, "c": 1}
    files = []
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for k in range(n):
            path = root / cls / f"{k}.png"
            Image.fromarray(np.full((8, 8, 3), (40 * k) % 256, np.uint8)).save(path)
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def test_read_subset_comments_blanks_duplicates(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("# a comment\n\n a \n./b/1.png  # trailing\nc/\na\nb\\0.png\n")
    assert read_subset(f) == ["a", "b/1.png", "c", "b/0.png"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(SubsetError, match="lists nothing"):
        read_subset(tmp_path / "empty.txt")
    with pytest.raises(SubsetError, match="neither a file nor a shipped list"):
        read_subset(tmp_path / "missing.txt")


def test_entries_match_files_and_class_folders(tmp_path):
    files = _tree(tmp_path)  # a/0..3, b/0..1, c/0 -> indices 0-3, 4-5, 6
    assert select_indices(files, tmp_path, ["a"]) == [0, 1, 2, 3]
    assert select_indices(files, tmp_path, ["c", "b/1.png"]) == [5, 6]
    with pytest.raises(SubsetError, match=r"2 of 3 subset entries match no image.*zebra, a/9"):
        select_indices(files, tmp_path, ["zebra", "b", "a/9.png"])


def test_fraction_counts_per_class_seeded_and_nested(tmp_path):
    files = _tree(tmp_path, {"a": 10, "b": 5, "c": 1})
    labels = [0] * 10 + [1] * 5 + [2]
    keep = select_indices(files, tmp_path, None, 0.5, seed=3, labels=labels)
    per_class = np.bincount([labels[i] for i in keep], minlength=3).tolist()
    assert per_class == [5, 2, 1]  # round(5.0), round(2.5) (to even), at least one
    assert keep == sorted(keep)
    assert keep == select_indices(files, tmp_path, None, 0.5, seed=3, labels=labels)
    assert keep != select_indices(files, tmp_path, None, 0.5, seed=4, labels=labels)
    small = select_indices(files, tmp_path, None, 0.2, seed=3, labels=labels)
    assert set(small) <= set(keep)  # one permutation per class: fractions nest
    # without labels: one draw over all 16 files, round(0.25 * 16) = 4
    flat = select_indices(files, tmp_path, None, 0.25, seed=0)
    assert len(flat) == 4 and set(flat) <= set(select_indices(files, tmp_path, None, 0.5))
    # the draw is a seeded permutation written out here from its definition
    order = np.random.default_rng([0, 0x5B5E7, 0]).permutation(16)
    assert flat == sorted(order[:4].tolist())
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        select_indices(files, tmp_path, None, 0.0)


def test_imagenet100_list_is_the_cmc_classes():
    ids = read_subset("imagenet100")
    assert len(ids) == 100 and len(set(ids)) == 100
    assert all(re.fullmatch(r"n\d{8}", i) for i in ids)
    assert ids[:3] == ["n02869837", "n01749939", "n02488291"] and ids[-1] == "n02090622"
    assert subset_file("imagenet100").is_file()


def test_dataset_subset_fraction_and_labels(tmp_path):
    data = tmp_path / "data"
    _tree(data, {"a": 4, "b": 2, "c": 3})
    (tmp_path / "keep.txt").write_text("b\nc\n")
    ds = build_pretrain_dataset(
        data, "whole", 32, class_tree=True, subset=tmp_path / "keep.txt", fraction=0.5, seed=1
    )
    assert ds.classes == ["b", "c"] and ds.class_to_idx == {"b": 0, "c": 1}
    assert len(ds) == 1 + 2  # round(1.0), round(1.5) = 2
    assert [f.parent.name for f in ds.files] == ["b", "c", "c"] and ds.labels == [0, 1, 1]
    assert ds[0]["label"] == 0
    flat = build_pretrain_dataset(data, "whole", 32, fraction=0.5, seed=1)
    assert len(flat) == round(0.5 * 9)
    same = build_pretrain_dataset(data, "whole", 32, fraction=0.5, seed=1)
    assert flat.files == same.files
    with pytest.raises(ValueError, match="synthetic"):
        build_pretrain_dataset("synthetic:4", "whole", 32, fraction=0.5)


def test_cache_needs_cover_the_subset_only(tmp_path):
    from detcon.masks.cache import MaskCache
    from detcon.masks.generators import build_generator

    data = tmp_path / "data"
    files = _tree(data, {"a": 2, "b": 2})
    cache = MaskCache(tmp_path / "cache", build_generator("grid:2"), data_root=data)
    cache.write_info()
    for f in files[:2]:  # masks for class a only
        cache.put(f, np.zeros((8, 8), np.int32))
    (tmp_path / "a.txt").write_text("a\n")
    ds = build_pretrain_dataset(
        data, tmp_path / "cache", 32, subset=tmp_path / "a.txt", compute_missing=False
    )
    assert len(ds) == 2
    with pytest.raises(FileNotFoundError, match="no entry for 2 of 4"):
        build_pretrain_dataset(data, tmp_path / "cache", 32, compute_missing=False)


def test_builtin_fraction():
    from detcon.data.builtin import builtin_images

    n = len(builtin_images())
    ds = build_pretrain_dataset("builtin", "whole", 32, fraction=0.5, seed=0)
    assert len(ds) == round(0.5 * n)


def test_config_fields():
    cfg = load_config("quickstart_cpu", ["data.subset=imagenet100", "data.fraction=0.1"])
    assert (cfg.data.subset, cfg.data.fraction) == ("imagenet100", 0.1)
    with pytest.raises(ConfigError, match=r"data.fraction must be in \(0, 1\]"):
        load_config("quickstart_cpu", ["data.fraction=0"])
