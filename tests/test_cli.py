import subprocess
import sys

import pytest

from detcon.cli import main


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "pretrain" in capsys.readouterr().out


def test_bad_input_is_one_line_error_not_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DETCON_DEBUG", raising=False)
    missing = tmp_path / "missing.pt"
    rc = main(["export", str(missing), "--format", "torchvision", "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "detcon export: error:" in err and str(missing) in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.pt").exists()


def test_debug_env_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("DETCON_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(
            [
                "export",
                str(tmp_path / "missing.pt"),
                "--format",
                "torchvision",
                "--out",
                str(tmp_path / "o.pt"),
            ]
        )


def test_help_does_not_import_torch():
    """``detcon --help`` builds every sub-parser without importing torch (heavy imports live
    inside each command's ``run()``)."""
    code = (
        "import sys; from detcon.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'torchvision', 'skimage', 'numba') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_export_command_lists_the_library_formats():
    from detcon.commands.export import FORMATS
    from detcon.export import FORMATS as LIBRARY_FORMATS

    assert FORMATS == LIBRARY_FORMATS
