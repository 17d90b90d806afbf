"""masks.source is parsed once into a typed source (detcon.masks.source)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detcon.config import ConfigError, load_config
from detcon.masks.source import (
    CacheFolder,
    Generated,
    GroundTruth,
    WholeImage,
    parse_mask_source,
)


def test_each_kind(tmp_path):
    assert parse_mask_source(str(tmp_path)) == CacheFolder(tmp_path)
    assert parse_mask_source(tmp_path) == CacheFolder(tmp_path)
    assert parse_mask_source("grid:rows=2") == Generated("grid:rows=2")
    assert parse_mask_source("grid:rows=2").build().params == {"rows": 2, "cols": 2}
    assert parse_mask_source("slic:n_segments=8").build().name == "slic"
    assert parse_mask_source("coco", coco_json="a.json") == GroundTruth(Path("a.json"))
    assert parse_mask_source("whole") == WholeImage() == parse_mask_source(None)
    assert parse_mask_source("whole").build().name == "whole"


@pytest.mark.parametrize("text", ["nope", "./missing", "/no/such/cache", "fhh:scale=3"])
def test_unknown_is_one_error_naming_both_possibilities(text):
    with pytest.raises(FileNotFoundError, match="neither a mask cache folder nor a generator"):
        parse_mask_source(text)


def test_bad_parameters_fail_at_parse_time():
    with pytest.raises(ValueError, match="grid"):
        parse_mask_source("grid:rows=0")


def test_the_config_checks_the_source_at_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a mask cache folder"):
        load_config(None, ["masks.source=fhh"])
    with pytest.raises(ConfigError, match="data.coco_json"):
        load_config(None, ["masks.source=coco"])
    cfg = load_config(None, [f"masks.source={tmp_path}"])
    assert cfg.masks.source == str(tmp_path)
