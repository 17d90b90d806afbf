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
