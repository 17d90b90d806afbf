"""Typed evaluation configs: the CLI options are exactly the config fields with the same
defaults, help shows defaults without reST markup, configs validate and are never mutated,
and the library runs from Python with plain keyword construction."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest
from test_eval_common import make_checkpoint, make_image_folder

from detcon.cli import build_parser, main
from detcon.commands.evaluate import config_from_args
from detcon.evaluation.config import (
    CONFIGS,
    DetectEvalConfig,
    KnnEvalConfig,
    LinearEvalConfig,
    SegmentEvalConfig,
)


def _protocol_parser(protocol: str) -> argparse.ArgumentParser:
    parser = build_parser()
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    return eval_parser._subparsers._group_actions[0].choices[protocol]


def _options(protocol: str) -> dict[str, argparse.Action]:
    p = _protocol_parser(protocol)
    return {a.dest: a for a in p._actions if a.dest != "help"}


@pytest.mark.parametrize("protocol", list(CONFIGS))
def test_cli_options_are_the_config_fields_with_the_same_defaults(protocol):
    options = _options(protocol)
    fields = {f.name: f for f in dataclasses.fields(CONFIGS[protocol])}
    assert set(options) == set(fields)
    for name, f in fields.items():
        if f.default is dataclasses.MISSING:  # data: required on both sides
            assert options[name].required, name
        else:
            assert options[name].default == f.default, name
            assert type(options[name].default) is type(f.default), name


def test_each_protocol_lists_only_the_options_it_uses():
    assert "epochs" not in _options("knn") and "epochs" not in _options("detect")
    assert "epochs" in _options("linear") and "epochs" in _options("segment")
    assert "k" in _options("knn") and "k" not in _options("linear")
    assert "frozen_bn" in _options("detect") and "frozen_bn" not in _options("segment")


@pytest.mark.parametrize("protocol", list(CONFIGS))
def test_help_shows_defaults_and_no_rest_markup(protocol, capsys):
    with pytest.raises(SystemExit):
        main(["eval", protocol, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":(mod|func|class|meth):", text)
    assert ("--epochs" in text) == (protocol in ("linear", "segment"))
    assert "--workers WORKERS" in text
    flat = " ".join(text.split())  # argparse wraps the help lines
    assert "(default: 4)" in flat and "(default: auto)" in flat and "(default: 0)" in flat
    if protocol == "knn":
        assert "(default: 20)" in flat and "(default: 0.07)" in flat
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        KnnEvalConfig(data="d")
    with pytest.raises(ValueError, match="exactly one"):
        KnnEvalConfig(data="d", checkpoint="c.pt", backbone_weights="random")
    with pytest.raises(ValueError, match="backbone_weights"):
        KnnEvalConfig(data="d", backbone_weights="imagenet")
    with pytest.raises(ValueError, match="which"):
        LinearEvalConfig(data="d", checkpoint="c.pt", which="ema")
    with pytest.raises(ValueError, match="temperature"):
        KnnEvalConfig(data="d", checkpoint="c.pt", temperature=0.0)
    with pytest.raises(ValueError, match="mode"):
        SegmentEvalConfig(data="d", checkpoint="c.pt", mode="fcn")
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        DetectEvalConfig(data="d", checkpoint="c.pt", max_iters=0)
    with pytest.raises(TypeError):  # keywords only: no positional mix-ups
        KnnEvalConfig("c.pt", None, data="d")
    with pytest.raises(TypeError, match="data"):
        KnnEvalConfig(checkpoint="c.pt")  # the data root is required
    cfg = SegmentEvalConfig(data="d", checkpoint="c.pt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_classes = 3
    assert cfg.resolved_lr == 0.02 and dataclasses.replace(cfg, mode="linear").resolved_lr == 0.1
    assert dataclasses.replace(cfg, lr=0.5).resolved_lr == 0.5


def test_config_from_args_builds_the_protocol_config():
    args = build_parser().parse_args(
        ["eval", "segment", "--backbone-weights", "random", "--data", "d", "--no-dilation"]
    )
    cfg = config_from_args(args, workers=1)
    assert type(cfg) is SegmentEvalConfig and cfg.workers == 1 and args.workers == 4
    assert cfg.dilate is False and cfg.num_classes is None and cfg.image_size == 513


def test_library_call_with_keywords_equals_the_cli(tmp_path):
    from detcon.evaluation.knn import run_knn
    from detcon.evaluation.linear import run_linear

    data = make_image_folder(tmp_path / "data", n_per_class=3)
    ck = make_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "knn.json"
    argv = [
        "eval",
        "knn",
        "--checkpoint",
        str(ck),
        "--data",
        str(data),
        "--image-size",
        "32",
        "--batch-size",
        "9",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--k",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    cfg = KnnEvalConfig(
        checkpoint=ck, data=data, image_size=32, batch_size=9, workers=0, device="cpu", k=2
    )
    result = run_knn(cfg)
    assert json.loads(out.read_text())["metrics"] == result["metrics"]
    assert result["config"]["k"] == 2 and result["config"]["num_train"] == 9
    with pytest.raises(TypeError, match="KnnEvalConfig"):
        run_knn(argparse.Namespace(**dataclasses.asdict(cfg)))
    with pytest.raises(TypeError, match="LinearEvalConfig"):
        run_linear(cfg)  # another protocol's config


def test_segmentation_resolves_defaults_without_changing_the_config(tmp_path):
    from test_eval_segment import make_voc

    from detcon.evaluation.segmentation import resolve_dataset
    from detcon.evaluation.voc import VOCSegmentation

    root = make_voc(tmp_path / "voc", n_train=1, n_val=1)
    cfg = SegmentEvalConfig(data=root, backbone_weights="random")
    assert resolve_dataset(cfg) == ("voc", VOCSegmentation, 21)
    assert cfg.num_classes is None and cfg.dataset is None  # derived values are not written back
    assert resolve_dataset(dataclasses.replace(cfg, num_classes=3))[2] == 3
    with pytest.raises(ValueError, match="19 train ids"):
        resolve_dataset(dataclasses.replace(cfg, dataset="cityscapes", num_classes=3))
