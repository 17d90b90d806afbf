"""TensorFlow/haiku 'SAME' padding of the ResNet backbone (``padding="same"``)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detcon.model.backbone import (
    PADDINGS,
    SameConv2d,
    SameMaxPool2d,
    build_backbone,
    same_pads,
    set_output_stride_,
    set_padding_,
)


def tf_same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """Written again from the TF definition (tf.nn.conv2d docs), independently of same_pads:
    out = ceil(n / s); total = max((out - 1) * s + effective kernel - n, 0); the larger half of
    an odd total goes after."""
    out = math.ceil(n / s)
    effective = (k - 1) * d + 1
    total = max((out - 1) * s + effective - n, 0)
    before = math.floor(total / 2)
    return before, total - before


def test_same_pads_hand_worked_examples():
    # n=8, k=3, s=2: out = ceil(8/2) = 4; the last window starts at (4-1)*2 = 6 and ends at
    # 6+3-1 = 8 = one pixel past the end -> total 1 -> (0 before, 1 after).
    assert same_pads(8, 3, 2) == (0, 1)
    # n=9, k=3, s=2: out 5; last window 8..10, input ends at 8 -> total 2 -> (1, 1), symmetric.
    assert same_pads(9, 3, 2) == (1, 1)
    # n=8, k=7, s=2 (stem): out 4; (4-1)*2 + 7 - 8 = 5 -> (2, 3).
    assert same_pads(8, 7, 2) == (2, 3)
    # n=9, k=7, s=2: out 5; 4*2 + 7 - 9 = 6 -> (3, 3) = torchvision's stem padding.
    assert same_pads(9, 7, 2) == (3, 3)
    # n=8, k=3, s=1, d=2: effective kernel 5; 7 + 5 - 8 = 4 -> (2, 2) = torch's padding=dilation.
    assert same_pads(8, 3, 1, 2) == (2, 2)
    # 1x1 stride-2 shortcut: never padded. n=8: out 4, 3*2 + 1 - 8 = -1 -> 0.
    assert same_pads(8, 1, 2) == (0, 0)


def test_same_pads_match_tf_formula():
    for n in range(1, 40):
        for k, s, d in [
            (7, 2, 1),
            (3, 2, 1),
            (3, 1, 1),
            (3, 1, 2),
            (3, 1, 4),
            (1, 2, 1),
            (3, 3, 1),
        ]:
            assert same_pads(n, k, s, d) == tf_same_pads(n, k, s, d), (n, k, s, d)
        assert same_pads(n, 1, 2) == (0, 0)  # 1x1 strided shortcut: no padding at any size


def _conv(k, s, d=1, cin=3, cout=5, bias=False):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=d * (k - 1) // 2, dilation=d, bias=bias)
    return conv, SameConv2d.from_conv(conv)


@pytest.mark.parametrize(
    "k,s,d,h,w,pad",  # pad = (left, right, top, bottom), worked out by hand
    [
        (7, 2, 1, 8, 8, (2, 3, 2, 3)),  # out 4: 3*2+7-8 = 5
        (7, 2, 1, 9, 9, (3, 3, 3, 3)),  # out 5: 4*2+7-9 = 6
        (7, 2, 1, 8, 9, (3, 3, 2, 3)),  # H even, W odd
        (3, 2, 1, 8, 8, (0, 1, 0, 1)),  # out 4: 3*2+3-8 = 1
        (3, 2, 1, 9, 9, (1, 1, 1, 1)),  # out 5: 4*2+3-9 = 2
        (3, 2, 1, 8, 9, (1, 1, 0, 1)),
        (3, 1, 2, 8, 9, (2, 2, 2, 2)),  # dilation 2, stride 1: effective 5 -> 4 = 2+2
        (1, 2, 1, 8, 9, (0, 0, 0, 0)),  # 1x1/2 shortcut
    ],
)
def test_same_conv_matches_hand_padded_reference(k, s, d, h, w, pad):
    conv, same = _conv(k, s, d, bias=True)
    assert same.weight is conv.weight and same.bias is conv.bias  # shared, not copied
    x = torch.randn(2, 3, h, w)
    ref = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, stride=s, dilation=d)
    left, right, top, bottom = pad
    assert (top, bottom) == tf_same_pads(h, k, s, d) and (left, right) == tf_same_pads(w, k, s, d)
    out = same(x)
    assert out.shape[-2:] == (math.ceil(h / s), math.ceil(w / s))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    if k == 1:  # shortcut: SAME is exactly torch's unpadded 1x1
        torch.testing.assert_close(out, conv(x), rtol=0, atol=0)


def test_same_conv_ignores_padding_attribute_and_grads_flow():
    conv, same = _conv(3, 2)
    same.padding = (5, 5)  # e.g. rewritten by set_output_stride_; must not matter
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    out = same(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    out.sum().backward()
    g_same = x.grad.clone()
    x.grad = None
    ref.sum().backward()
    torch.testing.assert_close(g_same, x.grad, rtol=0, atol=1e-5)


def test_slicing_shortcut_is_not_exact():
    """Why SameConv2d pads the extra pixel with F.pad: dropping the first row/column and
    padding symmetrically by ``after`` replaces x[0] by a zero, and x[0] is read by the first
    output (for (0, 1) at offset 0; for the stem's (2, 3) at kernel tap 2)."""
    conv, same = _conv(3, 2)
    x = torch.randn(1, 3, 8, 8)
    sliced = F.conv2d(x[..., 1:, 1:], conv.weight, stride=2, padding=1)
    assert sliced.shape == same(x).shape
    assert not torch.allclose(sliced, same(x), atol=1e-3)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 9), (8, 9), (7, 10), (2, 3), (1, 1)])
def test_same_maxpool_matches_neg_inf_padding(h, w):
    pool = nn.MaxPool2d(3, 2, 1)
    same = SameMaxPool2d.from_pool(pool)
    x = torch.randn(2, 4, h, w)
    (top, bottom), (left, right) = tf_same_pads(h, 3, 2), tf_same_pads(w, 3, 2)
    ref = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)
    out = same(x)
    assert out.shape[-2:] == (math.ceil(h / 2), math.ceil(w / 2))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # negative inputs: a zero pad would win the max on the border, -inf padding never does
    neg = -x.abs() - 1
    ref = F.max_pool2d(F.pad(neg, (left, right, top, bottom), value=float("-inf")), 3, 2)
    torch.testing.assert_close(same(neg), ref, rtol=0, atol=0)
    assert same(neg).max() < 0


def test_same_maxpool_fallback_for_large_pad():
    """A dilated pool whose SAME pad exceeds torch's kernel/2 cap goes through F.pad(-inf)."""
    same = SameMaxPool2d(3, 2, dilation=3)
    x = torch.randn(1, 2, 12, 12)
    t, b = tf_same_pads(12, 3, 2, 3)
    assert t > 1  # torch would refuse padding=t for a 3-wide kernel
    ref = F.max_pool2d(F.pad(x, (t, b, t, b), value=float("-inf")), 3, 2, dilation=3)
    torch.testing.assert_close(same(x), ref, rtol=0, atol=0)


class _HandPadded(nn.Module):
    """Reference: explicit pad with fixed, hand-written amounts, then the unpadded layer."""

    def __init__(self, pad, layer, value=0.0):
        super().__init__()
        self.pad, self.value, self.layer = pad, value, copy.deepcopy(layer)
        self.layer.padding = (0, 0) if isinstance(layer, nn.Conv2d) else 0

    def forward(self, x):
        return self.layer(F.pad(x, self.pad, value=self.value))


EXPECTED = {
    "resnet18": ["conv1", "maxpool", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"],
    "resnet50": ["conv1", "maxpool", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"],
}


def _randomise_(net):
    """Non-trivial BN statistics and affine params so every branch matters in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _reference(net, strided, size_pads):
    """Deep copy of a torch-padding net with the given modules hand-padded."""
    ref = copy.deepcopy(net)
    for name in strided:
        parent_name, _, attr = name.rpartition(".")
        parent = ref.get_submodule(parent_name) if parent_name else ref
        layer = getattr(parent, attr)
        value = float("-inf") if isinstance(layer, nn.MaxPool2d) else 0.0
        setattr(parent, attr, _HandPadded(size_pads[name], layer, value))
    return ref


def _same_names(net):
    return sorted(n for n, m in net.named_modules() if isinstance(m, SameConv2d | SameMaxPool2d))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_whole_network_matches_hand_padded_reference(name):
    torch.manual_seed(0)
    tnet = _randomise_(build_backbone(name, zero_init_residual=False))
    snet = build_backbone(name, zero_init_residual=False, padding="same").eval()
    # identical state_dict keys and shapes: checkpoints and exports are unchanged
    ts, ss = tnet.state_dict(), snet.state_dict()
    assert list(ts) == list(ss) and all(ts[k].shape == ss[k].shape for k in ts)
    snet.load_state_dict(ts)
    assert (tnet.padding, snet.padding) == ("torch", "same")
    assert _same_names(snet) == sorted(EXPECTED[name])
    for n, m in snet.named_modules():  # nothing else changed type; 1x1 shortcuts stay plain
        if n not in EXPECTED[name] and isinstance(m, nn.Conv2d | nn.MaxPool2d):
            assert type(m) in (nn.Conv2d, nn.MaxPool2d), n
    assert type(snet.layer2[0].downsample[0]) is nn.Conv2d
    # 64x64 input: stem at 64 -> (2,3); pool at 32, strided 3x3s at 16, 8, 4 -> (0,1)
    pads = {n: (0, 1, 0, 1) for n in EXPECTED[name]}
    pads["conv1"] = (2, 3, 2, 3)
    ref = _reference(tnet, EXPECTED[name], pads)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, tout = snet(x), tnet(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
    assert out.shape == tout.shape == (2, tnet.out_channels, 2, 2)
    assert (out - tout).abs().max() > 1e-2  # same weights, different padding -> different output


def test_non_square_odd_input_matches_reference():
    """64 x 72: W reaches odd sizes (9, 5) at layer3/4, where SAME is symmetric in W while
    still asymmetric in H, so those convs mix conv padding and an F.pad in one dimension."""
    torch.manual_seed(0)
    tnet = _randomise_(build_backbone("resnet18", zero_init_residual=False))
    snet = set_padding_(copy.deepcopy(tnet), "same")
    # H: 64 -> stem (2,3); 32, 16, 8, 4 -> (0,1).  W: 72 -> stem (2,3); pool at 36 (0,1);
    # layer2 at 18 (0,1); layer3 at 9: out 5, 4*2+3-9 = 2 -> (1,1); layer4 at 5: out 3 -> (1,1)
    pads = {
        "conv1": (2, 3, 2, 3),
        "maxpool": (0, 1, 0, 1),
        "layer2.0.conv1": (0, 1, 0, 1),
        "layer3.0.conv1": (1, 1, 0, 1),
        "layer4.0.conv1": (1, 1, 0, 1),
    }
    ref = _reference(tnet, list(pads), pads)
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        out = snet(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
    assert out.shape == (1, 512, 2, 3)


def test_set_padding_in_place_shares_parameters_and_reverts():
    torch.manual_seed(0)
    net = _randomise_(build_backbone("resnet18", zero_init_residual=False))
    params = [id(p) for p in net.parameters()]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        assert set_padding_(net, "same") is net and net.padding == "same"
        assert [id(p) for p in net.parameters()] == params  # an optimizer built before still works
        same = net(x)
        set_padding_(net, "same")  # idempotent
        torch.testing.assert_close(net(x), same, rtol=0, atol=0)
        set_padding_(net, "torch")
        assert net.padding == "torch" and not _same_names(net)
        assert [id(p) for p in net.parameters()] == params
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
        assert net.conv1.padding == (3, 3) and net.maxpool.padding == 1


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("order", ["stride_first", "padding_first"])
def test_output_stride_combination(output_stride, order):
    torch.manual_seed(0)
    base = _randomise_(build_backbone("resnet50", zero_init_residual=False))
    tnet = set_output_stride_(copy.deepcopy(base), output_stride)
    snet = copy.deepcopy(base)
    if order == "stride_first":
        set_padding_(set_output_stride_(snet, output_stride), "same")
    else:
        set_output_stride_(set_padding_(snet, "same"), output_stride)
    assert (snet.stride, snet.padding) == (output_stride, "same")
    # reference: dilated torch net, only the layers that still stride are hand-padded
    strided = ["conv1", "maxpool", "layer2.0.conv2"] + (["layer3.0.conv2"] * (output_stride == 16))
    pads = {n: (0, 1, 0, 1) for n in strided}
    pads["conv1"] = (2, 3, 2, 3)
    ref = _reference(tnet, strided, pads)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = snet(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
    assert out.shape == (1, 2048, 64 // output_stride, 64 // output_stride)


def test_basic_block_output_stride_and_channels_last():
    torch.manual_seed(0)
    net = _randomise_(build_backbone("resnet18", zero_init_residual=False, padding="same"))
    set_output_stride_(net, 8)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        assert ref.shape == (2, 512, 8, 8)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_channels_last_build_and_train_step():
    torch.manual_seed(0)
    net = build_backbone("resnet50", padding="same", channels_last=True, zero_init_residual=False)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    ref = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 3, 64, 64)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net.eval(), ref.eval()
        torch.testing.assert_close(net(xc), ref(x), rtol=1e-4, atol=1e-4)
    # train mode in float64: in float32 BN over the 8 values per channel of layer4 amplifies
    # kernel rounding differences to ~2% in the gradients, for torch padding just the same
    net.train().double(), ref.train().double()
    for model, inp in ((net, xc.double()), (ref, x.double())):
        out = model(inp)
        out.square().mean().backward()
    assert out.shape == (2, 2048, 2, 2)
    for a, b in ((net.conv1, ref.conv1), (net.layer2[0].conv2, ref.layer2[0].conv2)):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-6, atol=1e-8)


def test_unknown_padding_mode():
    assert PADDINGS == ("torch", "same")
    with pytest.raises(ValueError, match="padding must be one of"):
        build_backbone("resnet18", padding="valid")
    with pytest.raises(ValueError, match="'SAME'"):
        set_padding_(build_backbone("resnet18"), "SAME")
    assert build_backbone("resnet18").padding == "torch"
