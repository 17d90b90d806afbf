"""MaskCache: exact round trips (ids > 255 / > 65535), staleness, and resumable generation."""

import os

import numpy as np
import pytest
from PIL import Image

from detcon.commands.masks import generate_masks
from detcon.masks.cache import MaskCache, storage_dtype
from detcon.masks.generators import CallableGenerator, GridGenerator


def _write_images(folder, n=5, size=(24, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.full((size[0], size[1], 3), 20 * i, dtype=np.uint8)
        arr[: size[0] // 2] = 255 - 20 * i
        path = folder / f"img{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def test_storage_dtype_thresholds():
    assert storage_dtype(255) == np.uint8 and storage_dtype(256) == np.uint16
    assert storage_dtype(65535) == np.uint16 and storage_dtype(65536) == np.int32
    with pytest.raises(ValueError):
        storage_dtype(-1)


@pytest.mark.parametrize("max_id", [3, 300, 70_000])
def test_roundtrip_preserves_large_ids(tmp_path, max_id):
    (path,) = _write_images(tmp_path / "img", n=1, size=(300, 300))
    labels = (np.arange(300 * 300, dtype=np.int64).reshape(300, 300) % (max_id + 1)).astype(
        np.int32
    )
    cache = MaskCache(tmp_path / "cache", GridGenerator(), data_root=tmp_path / "img")
    entry = cache.put(path, labels)
    with np.load(entry) as z:
        assert z["labels"].dtype == storage_dtype(max_id)  # compact but exact
    got = cache.get(path)
    assert got.dtype == np.int32 and np.array_equal(got, labels) and got.max() == max_id


def test_changed_image_and_changed_params_are_stale(tmp_path):
    (path,) = _write_images(tmp_path / "img", n=1)
    gen = GridGenerator(2)
    cache = MaskCache(tmp_path / "cache", gen)
    labels = gen(np.asarray(Image.open(path).convert("RGB")))
    cache.put(path, labels)
    assert np.array_equal(cache.get(path), labels)
    assert MaskCache(tmp_path / "cache", GridGenerator(3)).get(path) is None  # other params
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # image "edited"
    assert cache.get(path) is None


def test_corrupt_entry_is_treated_as_missing(tmp_path):
    (path,) = _write_images(tmp_path / "img", n=1)
    cache = MaskCache(tmp_path / "cache", GridGenerator())
    entry = cache.put(path, np.zeros((24, 16), dtype=np.int32))
    entry.write_bytes(entry.read_bytes()[:40])  # half-written by a crashed disk
    assert cache.get(path) is None


def test_cache_opened_by_path_uses_recorded_generator(tmp_path):
    (path,) = _write_images(tmp_path / "img", n=1)
    cache = MaskCache(tmp_path / "cache", GridGenerator(2), data_root=tmp_path / "img")
    cache.write_info()
    cache.put(path, np.zeros((24, 16), dtype=np.int32))
    again = MaskCache(tmp_path / "cache")
    assert again.params == {"rows": 2, "cols": 2} and again.get(path) is not None
    assert [m["image"] for m in again.entries()] == ["img0.png"]
    with pytest.raises(FileNotFoundError, match="not a mask cache"):
        MaskCache(tmp_path / "nothing")


class _Interrupt(BaseException):
    pass


def test_resume_after_interruption_recomputes_nothing_done(tmp_path):
    paths = _write_images(tmp_path / "img", n=6)
    calls = []

    def flaky(image):
        if len(calls) == 3:
            raise _Interrupt  # the run dies while computing the 4th image
        calls.append(1)
        return (image[..., 0] > 128).astype(np.int32)

    gen = CallableGenerator(flaky, "thresh", {"t": 128})
    cache = MaskCache(tmp_path / "cache", gen)
    with pytest.raises(_Interrupt):
        generate_masks(paths, gen, cache, workers=1, progress=False)
    done = {p: cache.path(p).stat().st_mtime_ns for p in paths[:3]}
    assert all(cache.get(p) is not None for p in paths[:3])
    assert all(cache.get(p) is None for p in paths[3:])
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no half-written files left

    count = []
    counting = CallableGenerator(
        lambda im: count.append(1) or (im[..., 0] > 128).astype(int), "thresh", {"t": 128}
    )
    stats = generate_masks(paths, counting, cache, workers=1, progress=False)
    assert len(count) == 3 and stats.computed == 3 and stats.reused == 3
    assert {p: cache.path(p).stat().st_mtime_ns for p in paths[:3]} == done  # untouched
    for p in paths:
        ref = (np.asarray(Image.open(p).convert("RGB"))[..., 0] > 128).astype(np.int32)
        assert np.array_equal(cache.get(p), ref)


def test_parallel_generation_matches_serial(tmp_path):
    paths = _write_images(tmp_path / "img", n=6)
    gen = GridGenerator(2)
    par = MaskCache(tmp_path / "par", gen)
    stats = generate_masks(paths, gen, par, workers=2, chunksize=1, progress=False)
    assert stats.computed == 6 and stats.segments == [4] * 6
    for p in paths:
        assert np.array_equal(par.get(p), gen(np.asarray(Image.open(p).convert("RGB"))))
