import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from detcon.model import backbone_names, build_backbone, load_torchvision_weights

TV = {n: getattr(torchvision.models, n) for n in ["resnet18", "resnet34", "resnet50", "resnet101"]}


def _count_reference(block: str, layers, width=1) -> int:
    """Parameter count of a v1.5 ResNet trunk written from its definition (convs have no bias,
    every BN has weight + bias)."""
    m = width
    total = 3 * 7 * 7 * 64 * m + 2 * 64 * m  # stem conv + bn
    inplanes = 64 * m
    for stage, n_blocks in enumerate(layers):
        planes = 64 * m * 2**stage
        expansion = 4 if block == "bottleneck" else 1
        out = planes * expansion
        for i in range(n_blocks):
            if block == "bottleneck":
                total += inplanes * planes + 9 * planes * planes + planes * out
                total += 2 * (planes + planes + out)
            else:
                total += 9 * inplanes * planes + 9 * planes * planes + 2 * (planes + planes)
            if i == 0 and (stage > 0 or inplanes != out):
                total += inplanes * out + 2 * out  # projection shortcut conv + bn
            inplanes = out
    return total


def test_names_and_unknown_name_error():
    assert backbone_names() == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet200",
    ]
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet51")
    with pytest.raises(ValueError, match="width_multiplier"):
        build_backbone("resnet18", width_multiplier=0)


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_output_shape_and_attributes(name, channels):
    net = build_backbone(name)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, channels, 2, 2)
    assert (net.out_channels, net.stride, net.name, net.width_multiplier) == (channels, 32, name, 1)
    assert not hasattr(net, "fc") and not hasattr(net, "avgpool")
    assert torch.equal(net.forward_features(x := torch.randn(2, 3, 64, 64)), net(x))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        net(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", list(TV))
def test_state_dict_matches_torchvision_minus_fc(name):
    ours = build_backbone(name).state_dict()
    theirs = {k: v for k, v in TV[name](weights=None).state_dict().items()}
    assert {k for k in theirs if k.startswith("fc.")} == {"fc.weight", "fc.bias"}
    assert set(ours) == set(theirs) - {"fc.weight", "fc.bias"}
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_param_counts_match_reference_formula():
    r50 = build_backbone("resnet50")
    assert sum(p.numel() for p in r50.parameters()) == _count_reference("bottleneck", (3, 4, 6, 3))
    r18 = build_backbone("resnet18")
    assert sum(p.numel() for p in r18.parameters()) == _count_reference("basic", (2, 2, 2, 2))
    r200 = build_backbone("resnet200")  # construct only; no forward (too slow for CI)
    ref = _count_reference("bottleneck", (3, 24, 36, 3))
    assert sum(p.numel() for p in r200.parameters()) == ref
    # with a 1000-way fc this is the commonly quoted ResNet-200 size (~64.7M)
    assert abs(ref + 2048 * 1000 + 1000 - 64.7e6) < 0.05e6
    assert len(r200.layer2) == 24 and len(r200.layer3) == 36


def test_width_multiplier_scales_channels():
    net = build_backbone("resnet50", width_multiplier=2)
    assert net.out_channels == 4096 and net.conv1.out_channels == 128
    assert net.layer1[0].conv2.out_channels == 128  # bottleneck inner width 64 * 2
    assert sum(p.numel() for p in net.parameters()) == _count_reference(
        "bottleneck", (3, 4, 6, 3), width=2
    )
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4096, 1, 1)


def test_zero_init_residual():
    for name, block, attr in [("resnet18", BasicBlock, "bn2"), ("resnet50", Bottleneck, "bn3")]:
        net = build_backbone(name)
        blocks = [m for m in net.modules() if isinstance(m, block)]
        assert blocks and all(torch.all(getattr(b, attr).weight == 0) for b in blocks)
        assert torch.all(net.bn1.weight == 1)
        off = build_backbone(name, zero_init_residual=False)
        assert all(
            torch.all(getattr(b, attr).weight == 1) for b in off.modules() if isinstance(b, block)
        )


def test_official_init_is_truncated_fan_in_normal():
    torch.manual_seed(0)
    net = build_backbone("resnet50", init="official")
    w = net.layer3[0].conv2.weight  # [256, 256, 3, 3], fan_in 2304
    sigma = 1 / (256 * 9) ** 0.5
    assert w.abs().max() <= 2 * sigma + 1e-7
    # std of a N(0, s) truncated at +-2s is 0.880 s
    assert abs(w.std().item() / sigma - 0.880) < 0.02
    with pytest.raises(ValueError, match="init"):
        build_backbone("resnet18", init="xavier")


def test_load_torchvision_weights_gives_identical_features():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BN stats so the comparison exercises every buffer
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    ours = load_torchvision_weights(build_backbone("resnet18"), tv.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        trunk = nn.Sequential(*list(tv.children())[:-2])  # up to (not incl.) avgpool
        ref = trunk(x)
        assert torch.equal(ours(x), ref)
        assert torch.allclose(ours(x).mean((2, 3)), torch.flatten(tv.avgpool(ref), 1))


def test_load_torchvision_weights_reports_exact_key_mismatch():
    net = build_backbone("resnet18")
    before = net.conv1.weight.clone()
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer1.0.bn1.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_torchvision_weights(net, sd)
    assert "missing=['layer1.0.bn1.bias']" in str(err.value)
    assert "unexpected=['extra.weight']" in str(err.value)
    assert torch.equal(net.conv1.weight, before)  # nothing loaded on failure
    bad = dict(net.state_dict(), **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(RuntimeError, match="conv1.weight"):  # shape mismatch
        load_torchvision_weights(net, bad)


def test_channels_last():
    net = build_backbone("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        cl = build_backbone("resnet18", channels_last=True).eval()
        cl.load_state_dict(net.state_dict())
        assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "output_stride,dilate", [(16, [False, False, True]), (8, [False, True, True])]
)
def test_output_stride_matches_torchvision_dilation(output_stride, dilate):
    """Bottleneck nets: same weights, same features as torchvision's replace_stride_with_dilation."""
    from detcon.model.backbone import set_output_stride_

    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate).eval()
    ours = load_torchvision_weights(build_backbone("resnet50"), tv.state_dict())
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    set_output_stride_(ours, output_stride).eval()
    assert ours.stride == output_stride
    after = ours.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = nn.Sequential(*list(tv.children())[:-2])(x)
        out = ours(x)
    assert out.shape == (1, 2048, 64 // output_stride, 64 // output_stride)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_output_stride_basic_blocks_and_errors():
    from detcon.model.backbone import set_output_stride_

    net = set_output_stride_(build_backbone("resnet18"), 16)
    assert net(torch.randn(2, 3, 96, 96)).shape == (2, 512, 6, 6)
    # first block of layer4 keeps dilation 1 (its conv no longer strides), the second uses 2
    assert net.layer4[0].conv1.stride == (1, 1) and net.layer4[0].conv1.dilation == (1, 1)
    assert net.layer4[1].conv1.dilation == (2, 2) and net.layer4[0].downsample[0].stride == (1, 1)
    assert net.layer3[0].conv1.stride == (2, 2)  # untouched at 16
    assert set_output_stride_(build_backbone("resnet18"), 32).stride == 32
    with pytest.raises(ValueError, match="8, 16 or 32"):
        set_output_stride_(build_backbone("resnet18"), 4)
    with pytest.raises(ValueError, match="already has output stride 16"):
        set_output_stride_(net, 8)
