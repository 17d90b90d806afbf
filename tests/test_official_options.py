"""The official recipe's options: haiku init, random target init, true BYOL, whole-image
methods, and the config keys that select them."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import without_masks
from torchvision.models.resnet import BasicBlock

from detcon.config import ConfigError, load_config, resolve
from detcon.losses import byol_loss
from detcon.step import build_models, forward_loss, prepare_masks

TINY = [
    "model.backbone=resnet18",
    "model.proj_hidden=64",
    "model.proj_dim=16",
    "model.pred_hidden=64",
    "data.image_size=64",
    "data.batch_size=4",
    "masks.num_masks=3",
    "train.device=cpu",
    "train.channels_last=false",
]


def _models(*extra):
    method = next((e.split("=")[1] for e in extra if e.startswith("loss.method=")), "")
    cfg = load_config(None, without_masks(TINY, method) + list(extra))
    resolve(cfg, dataset_size=4)  # validates
    online, target = build_models(cfg, torch.device("cpu"), num_classes=5)
    return cfg, online, target


def test_defaults_are_the_official_values():
    cfg = load_config(None)
    assert (cfg.model.init, cfg.model.padding, cfg.model.target_init) == (
        "official",
        "same",
        "random",
    )
    assert cfg.data.antialias is False and cfg.train.precision == "fp32"
    for recipe in ("detcon_b_imagenet_1000ep", "detcon_b_imagenet_300ep", "byol_imagenet_1000ep"):
        c = load_config(recipe)
        assert c.train.precision == "fp32" and c.model.init == "official", recipe
        assert c.model.padding == "same" and c.model.target_init == "random", recipe


def test_official_init_statistics():
    _, online, target = _models()
    net = online.net
    convs = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat(
        [(m.weight / (1 / math.sqrt(m.weight[0].numel()))).flatten() for m in convs]
    )
    # truncated at +-2 sigma, sigma not rescaled: std of N(0,1) cut at 2 is 0.8796
    assert weights.abs().max() <= 2.0 + 1e-6
    assert weights.std().item() == pytest.approx(0.8796, abs=0.01)
    assert weights.mean().item() == pytest.approx(0.0, abs=0.01)
    for fc in (net.projector.fc1, net.predictor.fc1, online.probe):
        z = fc.weight * math.sqrt(fc.in_features)
        assert z.abs().max() <= 2.0 + 1e-6 and z.std().item() == pytest.approx(0.8796, abs=0.05)
        assert torch.equal(fc.bias, torch.zeros_like(fc.bias))
    for block in net.backbone.modules():
        if isinstance(block, BasicBlock):
            assert torch.equal(block.bn2.weight, torch.zeros_like(block.bn2.weight))
    # torchvision's kaiming fan-out normal is not truncated: its tails reach past 4 sigma
    _, tv, _ = _models("model.init=torchvision")
    conv = tv.net.backbone.layer4[0].conv2.weight
    assert conv.abs().max() / conv.std() > 4
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)


def test_target_init_random_or_copy():
    _, online, target = _models()  # official: an independent random initialisation
    on, tg = online.net.state_dict(), target.state_dict()
    assert set(on) == set(tg)
    assert not torch.equal(on["backbone.conv1.weight"], tg["backbone.conv1.weight"])
    assert not any(p.requires_grad for p in target.parameters())
    _, online, target = _models("model.target_init=copy")
    on, tg = online.net.state_dict(), target.state_dict()
    assert all(torch.equal(on[k], tg[k]) for k in on)


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_whole_image_methods_fix_the_masks_at_load(method):
    """`--method byol` on a recipe with FH masks builds the dataset with whole-image masks."""
    cfg = load_config("quickstart_cpu", [f"loss.method={method}"])
    assert (cfg.masks.source, cfg.masks.num_masks) == ("whole", 1)
    cfg = load_config(None, ["masks.source=whole", "masks.num_masks=1"])  # the ablation arm
    assert cfg.loss.method == "detcon_b" and cfg.masks.source == "whole"


def test_byol_is_the_regression_loss_on_global_features():
    cfg, online, target = _models("loss.method=byol")
    g = torch.Generator().manual_seed(0)
    views = tuple(torch.randn(4, 3, 64, 64, generator=g) for _ in range(2))
    regions = tuple(torch.randint(0, 5, (4, 64, 64), generator=g) for _ in range(2))
    cells, ids = prepare_masks(*regions, 1, (2, 2), g, whole=True)
    assert all(torch.equal(c, torch.zeros_like(c)) for c in cells)  # maps are ignored
    loss, reported, _ = forward_loss(online, target, views, cells, ids, cfg)
    net = online.net
    feats = [net.backbone(v).mean((2, 3)) for v in views]  # global average pooling
    pred = [net.predictor(net.projector(f[:, None]))[:, 0] for f in feats]
    with torch.no_grad():
        tgt = [target.projector(target.backbone(v).mean((2, 3))[:, None])[:, 0] for v in views]
    want = byol_loss(pred[0], pred[1], tgt[0], tgt[1])
    torch.testing.assert_close(reported, want.detach(), rtol=1e-5, atol=1e-6)
    assert 0 < loss.item() < 8
    loss.backward()
    assert net.predictor.fc1.weight.grad is not None and target.projector.fc1.weight.grad is None


def test_bad_choices_are_refused_at_load():
    for key, value in (
        ("model.init", "kaiming"),
        ("model.padding", "valid"),
        ("model.target_init", "zeros"),
        ("loss.method", "moco"),
        ("train.precision", "fp8"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={value}"])


def test_training_loss_distinct_path_equals_the_official_one():
    """loss.distinct (default) on the network's own mask-pooled rows = the official loss."""
    cfg, online, target = _models("masks.num_masks=8")
    assert cfg.loss.distinct is True
    g = torch.Generator().manual_seed(2)
    views = tuple(torch.randn(4, 3, 64, 64, generator=g) for _ in range(2))
    regions = tuple(torch.randint(0, 3, (4, 64, 64), generator=g) for _ in range(2))
    cells, ids = prepare_masks(*regions, 8, (2, 2), g)
    losses, grads = [], []
    for distinct in (True, False):
        cfg.loss.distinct = distinct
        loss, reported, _ = forward_loss(online, target, views, cells, ids, cfg)
        online.zero_grad()
        loss.backward()
        losses.append(reported)
        grads.append(
            {n: p.grad.clone() for n, p in online.named_parameters() if p.grad is not None}
        )
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    scale = max(float(g.abs().max()) for g in grads[1].values())
    for name, g1 in grads[1].items():
        assert float((grads[0][name] - g1).abs().max()) / scale < 1e-4, name


def test_config_choices_equal_the_modules_they_configure():
    """config.py keeps its own copies (it imports no torch); they must not drift."""
    from detcon import config
    from detcon.model.backbone import PADDINGS
    from detcon.model.heads import INITS

    assert set(config.INITS) == set(INITS) and set(config.PADDINGS) == set(PADDINGS)
