"""Config: typed YAML + overrides, clear errors for bad keys, derived fields, shipped recipes."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from detcon.config import (
    Config,
    ConfigError,
    apply_dict,
    from_dict,
    load_config,
    recipe_names,
    resolve,
    save_yaml,
    to_dict,
)


def test_unknown_override_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"optim\.base_lrr.*Did you mean: optim\.base_lr"):
        load_config(None, ["optim.base_lrr=0.3"])


def test_unknown_yaml_key_and_group(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"train\.stpes.*train\.steps"):
        load_config(str(path))
    path.write_text("optimizer:\n  base_lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config group 'optimizer'.*optim"):
        load_config(str(path))


def test_typed_parsing_and_type_errors():
    cfg = load_config(
        None,
        [
            "optim.base_lr=3e-1",
            "train.steps=12",
            "train.compile=true",
            "data.data=/x/y",
            "optim.weight_decay=0",
        ],
    )
    assert cfg.optim.base_lr == 0.3 and cfg.train.steps == 12 and cfg.train.compile is True
    assert cfg.data.data == "/x/y" and isinstance(cfg.optim.weight_decay, float)
    with pytest.raises(ConfigError, match="train.steps: cannot parse 'ten' as int"):
        load_config(None, ["train.steps=ten"])
    with pytest.raises(ConfigError, match="must look like group.field=value"):
        load_config(None, ["train.steps"])


def test_yaml_override_round_trip(tmp_path):
    cfg = load_config("detcon_b_imagenet_300ep", ["optim.base_lr=0.25", "train.out=/tmp/r"])
    path = save_yaml(cfg, tmp_path / "config.yaml")
    again = load_config(str(path))
    assert to_dict(again) == to_dict(cfg)
    assert again.optim.base_lr == 0.25 and again.train.epochs == 300
    assert to_dict(from_dict(yaml.safe_load(path.read_text()))) == to_dict(cfg)


def test_official_derived_fields():
    # official: max_steps = epochs * 1281167 // 4096, warmup = (epochs // 100) epochs, lr 3.2
    for name, epochs, steps, warm in [
        ("detcon_b_imagenet_1000ep", 1000, 312784, 3127),
        ("detcon_b_imagenet_300ep", 300, 93835, 938),
    ]:
        cfg = load_config(name)
        plan = resolve(cfg, dataset_size=1281167, world_size=8)
        assert cfg.train.epochs == epochs and plan.total_steps == steps
        assert plan.warmup_steps == warm and plan.steps_per_epoch == 1281167 // 4096
        assert plan.peak_lr == pytest.approx(3.2)
        assert plan.local_batch == 512 and plan.world_size == 8
        assert cfg.masks.num_masks == 16 and cfg.loss.temperature == 0.1
        assert cfg.optim.weight_decay == 1.5e-6 and cfg.optim.ema_base == 0.996


def test_warmup_of_a_step_budget_is_one_percent_of_the_run():
    # train.steps given, warmup_epochs=-1: 1% of the run (the official epochs // 100 of epochs),
    # not epochs // 100 of the *default* epoch count
    plan = resolve(load_config(None, ["train.steps=1000", "data.batch_size=8"]), dataset_size=64)
    assert plan.total_steps == 1000 and plan.warmup_steps == 10
    plan = resolve(load_config(None, ["train.steps=128", "data.batch_size=8"]), dataset_size=64)
    assert plan.warmup_steps == 1
    plan = resolve(
        load_config(None, ["train.steps=128", "optim.warmup_epochs=2", "data.batch_size=8"]),
        dataset_size=64,
    )
    assert plan.warmup_steps == 16  # explicit epochs: 2 * 64 // 8


def test_resolve_validates():
    with pytest.raises(ConfigError, match="not divisible by world_size"):
        resolve(load_config(None, ["data.batch_size=10"]), dataset_size=100, world_size=4)
    with pytest.raises(ConfigError, match="dataset has 5 images"):
        resolve(load_config(None, ["data.batch_size=8"]), dataset_size=5)
    with pytest.raises(ConfigError, match="loss.method"):
        resolve(load_config(None, ["loss.method=detcon_x"]), dataset_size=100)
    cfg = load_config(None, ["loss.method=byol", "data.batch_size=4"])
    resolve(cfg, dataset_size=8)
    assert cfg.masks.source == "whole" and cfg.masks.num_masks == 1


def test_the_plan_is_frozen_and_leaves_the_config_alone():
    cfg = load_config(None, ["train.steps=10", "data.batch_size=8"])
    before = to_dict(cfg)
    plan = resolve(cfg, dataset_size=64)
    assert to_dict(cfg) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.total_steps = 3


@pytest.mark.parametrize(
    "key", ["optim.peak_lr", "optim.warmup_steps", "train.total_steps", "train.local_batch"]
)
def test_a_derived_value_cannot_be_set(key):
    with pytest.raises(ConfigError, match=f"{key} is derived"):
        load_config(None, [f"{key}=1"])


def test_a_saved_run_config_loads_back_as_a_recipe(tmp_path):
    """config.yaml of a run (with its plan section, or an older file that kept the derived
    values among the fields) loads as a recipe: the derived values are recomputed."""
    cfg = load_config(None, ["train.steps=10", "data.batch_size=8"])
    path = save_yaml(cfg, tmp_path / "config.yaml", resolve(cfg, dataset_size=64))
    assert "plan" in yaml.safe_load(path.read_text())
    assert to_dict(load_config(str(path))) == to_dict(cfg)
    old = to_dict(cfg)
    old["optim"]["peak_lr"], old["train"]["total_steps"] = 0.5, 7
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert to_dict(load_config(str(tmp_path / "old.yaml"))) == to_dict(cfg)


@pytest.mark.parametrize("override", ["masks.source=fh", "masks.num_masks=16"])
def test_an_explicit_mask_setting_that_the_method_overrides_is_an_error(override):
    with pytest.raises(ConfigError, match="whole-image mask"):
        load_config(None, ["loss.method=byol", override])
    cfg = load_config(None, ["loss.method=simclr", "masks.source=whole", "masks.num_masks=1"])
    assert (cfg.masks.source, cfg.masks.num_masks) == ("whole", 1)


def test_choices_are_the_literal_field_types():
    from detcon.config import CHOICES, METHODS

    assert CHOICES["loss.method"] == METHODS == ("detcon_b", "detcon_s", "byol", "simclr")
    assert CHOICES["data.augment_on"] == ("host", "device")
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["optim.optimizer=adam"])
    with pytest.raises(ConfigError, match="not one of"):
        apply_dict(Config(), {"data": {"crop": "centre"}})


def test_every_shipped_recipe_loads():
    names = recipe_names()
    assert {
        "detcon_b_imagenet_1000ep",
        "detcon_b_imagenet_300ep",
        "detcon_s_imagenet_1000ep",
        "byol_imagenet_1000ep",
        "simclr_imagenet_1000ep",
        "detcon_b_coco",
        "quickstart_cpu",
    } <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, Config)
        resolve(cfg, dataset_size=max(cfg.data.batch_size, 1281167))
    with pytest.raises(ConfigError, match="detcon_b_imagenet_300ep"):
        load_config("detcon_b_imagenet_30ep")
