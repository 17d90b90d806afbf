import os
import stat

import pytest

from detcon.fileio import atomic_path, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "result.json"
    with atomic_write(path, "w") as f:
        f.write("first")
    assert path.read_text() == "first"

    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("half-written")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "first"  # old content intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp left


def test_atomic_path_keeps_suffix_and_uses_umask_mode(tmp_path):
    out = tmp_path / "plot.png"
    old = os.umask(0o022)
    try:
        with atomic_path(out) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == out.parent and tmp != out
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert out.read_bytes() == b"x"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_atomic_write_rejects_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "f", "a"):
            pass
