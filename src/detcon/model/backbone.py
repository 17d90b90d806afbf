"""ResNet backbones without pooling or classifier: ``[B,3,H,W] -> [B,C,H/32,W/32]``.

The network is assembled from torchvision's own ``BasicBlock`` / ``Bottleneck`` classes in the
same way as ``torchvision.models.ResNet`` (children ``conv1, bn1, relu, maxpool, layer1..layer4``,
projection shortcuts named ``downsample.0/1``), so that at width 1 the ``state_dict`` keys and
shapes are exactly torchvision's minus ``fc.*`` and exporting weights is a pure prefix operation.
We build the stages ourselves rather than calling ``torchvision.models.resnet50()`` because
torchvision cannot scale the stage widths (the official ``width_multiplier``); the tests check
key-for-key and output equality with the torchvision constructors.

Official details (docs/official.md §5) that hold here too: 7x7/2 stem with 64 channels
and no bias, 3x3/2 max-pool, bottleneck stride on the 3x3 conv ("v1.5", torchvision's default),
projection shortcut (1x1 conv + BN) on the first block of each stage, the last BN of every residual
branch zero-initialised, BN momentum 0.1 = haiku decay 0.9, eps 1e-5.

Padding (:data:`PADDINGS`, :func:`set_padding_`): ``"same"`` is the official haiku/TensorFlow
behaviour (``padding='SAME'``: a strided layer on an even size pads one more pixel after than
before, e.g. 0 before / 1 after for a 3x3/2 conv or max-pool, 2 / 3 for the 7x7/2 stem);
``"torch"`` is torchvision's symmetric padding (3 for the stem, 1 for 3x3s), which shifts every
feature cell by one input pixel relative to the official network. The parameters and
``state_dict`` are identical in both modes. ``build_backbone`` defaults to ``"torch"``; which
mode a run uses is decided by the config (the official recipe uses ``"same"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from .heads import check_init, trunc_normal_fan_in_

# name -> (block, blocks per stage). resnet200 is the official DetCon ResNet-200 layout.
_SPECS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
    "resnet200": (Bottleneck, (3, 24, 36, 3)),
}


# Padding modes accepted by :func:`set_padding_` / :func:`build_backbone`.
PADDINGS = ("torch", "same")


def check_padding(padding: str) -> str:
    """Return ``padding`` if it is one of :data:`PADDINGS`, else raise ``ValueError``."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/XLA ``'SAME'`` padding ``(before, after)`` of one spatial dimension.

    ``out = ceil(size / stride)``, ``total = max((out - 1) * stride + dilation * (kernel - 1)
    + 1 - size, 0)``, ``before = total // 2``, ``after = total - before`` (the extra pixel of an
    odd total goes after), as ``lax.padtype_to_pads`` and ``tf.nn.conv2d`` compute it.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


_Conv = TypeVar("_Conv", bound=nn.Conv2d)
# torch types Conv2d's kernel_size / stride / padding / dilation as tuple[int, ...]; they are pairs
_Pair = tuple[int, int]


def _conv_sharing(cls: type[_Conv], conv: nn.Conv2d) -> _Conv:
    """A ``cls`` with ``conv``'s hyperparameters sharing its parameter tensors (built on the
    meta device: no allocation, no init)."""
    new = cls(
        conv.in_channels,
        conv.out_channels,
        cast(_Pair, conv.kernel_size),
        stride=cast(_Pair, conv.stride),
        padding=cast("str | _Pair", conv.padding),
        dilation=cast(_Pair, conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
        device="meta",
    )
    new.weight, new.bias = conv.weight, conv.bias
    new.train(conv.training)
    return new


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``'SAME'`` zero padding computed from the input size.

    The padding is derived at every forward from the input's spatial size and the module's
    ``kernel_size`` / ``stride`` / ``dilation``; the ``padding`` attribute is ignored (it keeps
    the torchvision value, so :func:`set_padding_` ``"torch"`` can restore it and
    ``set_output_stride_`` may rewrite it). The symmetric part of the padding is the conv's own
    (no copy); only the extra pixel after (strided layers on some sizes) costs an ``F.pad``.
    Parameters and ``state_dict`` keys are those of ``nn.Conv2d``. Output size is
    ``ceil(size / stride)`` per dimension.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> SameConv2d:
        """A ``SameConv2d`` sharing ``conv``'s parameter tensors (no copy, no new init)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"SAME padding needs a zero-padded conv, got {conv!r}")
        return _conv_sharing(cls, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pads(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_pads(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if bottom != top or right != left:  # before <= after always: pad only the extra after
            x = F.pad(x, (0, right - left, 0, bottom - top))
        return F.conv2d(
            x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
        )


def _pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """Output size of ``torch.nn.functional.max_pool2d`` (its documented formula)."""
    num = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-num // stride) if ceil else num // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:  # the last window must start inside
        out -= 1
    return out


class SameMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TensorFlow ``'SAME'`` padding computed from the input size.

    TF pads max-pools with values that never win the max, i.e. ``-inf``, which is also what
    torch's ``max_pool2d`` padding and ``ceil_mode`` overhang mean. An asymmetric SAME padding
    ``(p, p + 1)`` is therefore done without a copy as ``max_pool2d(padding=p,
    ceil_mode=True)``, whose windows start at the same positions and whose extra last window
    overhangs by the extra pixel; the output size is checked to be ``ceil(size / stride)`` and
    otherwise (never for ResNet shapes) an explicit ``-inf`` ``F.pad`` is used. The
    ``padding`` and ``ceil_mode`` attributes are ignored (kept for ``"torch"``).
    """

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> SameMaxPool2d:
        if pool.return_indices:
            raise ValueError("SAME max-pool does not support return_indices")
        new = cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, False, pool.ceil_mode)
        new.train(pool.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, d = (
            nn.modules.utils._pair(v) for v in (self.kernel_size, self.stride, self.dilation)
        )
        dims = [(x.shape[-2 + i], k[i], s[i], d[i]) for i in range(2)]
        pads = [same_pads(*dim) for dim in dims]
        before = tuple(p[0] for p in pads)
        ceil = any(p[0] != p[1] for p in pads)  # symmetric: torch's own -inf padding suffices
        exact = all(2 * b <= kk for b, kk in zip(before, k, strict=True)) and all(
            _pool_out(n, kk, ss, b, dd, ceil) == -(-n // ss)
            for (n, kk, ss, dd), b in zip(dims, before, strict=True)
        )
        if not exact:  # explicit -inf padding (torch caps its padding at kernel // 2)
            (top, bottom), (left, right) = pads
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            before, ceil = (0, 0), False
        return F.max_pool2d(x, k, s, before, d, ceil_mode=ceil)


def backbone_names() -> list[str]:
    """The names accepted by :func:`build_backbone`."""
    return list(_SPECS)


class Backbone(nn.Module):
    """A torchvision-layout ResNet trunk without ``avgpool`` and ``fc``.

    Args:
        block: torchvision ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        width_multiplier: positive int scaling every channel count: the stem (64 * m) and
            each stage's block width (64, 128, 256, 512) * m, so a ResNet-50 x2 ends with 4096
            channels (the official haiku ``width_multiplier``). Width 1 is torchvision's net.
        zero_init_residual: zero the scale of the last BN of each residual branch (``bn3`` of a
            Bottleneck, ``bn2`` of a BasicBlock), as the official code does.
        init: ``"torchvision"`` (kaiming-normal fan-out convs, torchvision's default) or
            ``"official"`` (the haiku default: truncated normal at +-2 sigma with
            sigma = 1/sqrt(fan_in), see :func:`trunc_normal_fan_in_`).
        name: a label stored as ``self.name``.
        padding: ``"torch"`` (torchvision's symmetric padding) or ``"same"`` (the official
            haiku/TensorFlow ``'SAME'`` padding); see :func:`set_padding_`. The default here
            keeps torchvision's network; the config decides which mode a run uses (the
            official recipe uses ``"same"``).

    Attributes: ``out_channels`` (C), ``stride`` (32), ``name``, ``width_multiplier``,
    ``padding``.
    ``forward(x [B,3,H,W]) -> [B,C,ceil(H/32),ceil(W/32)]``; ``forward_features`` is an alias.
    Works with ``channels_last`` models and inputs (``.to(memory_format=torch.channels_last)``).
    """

    stride = 32
    padding = "torch"

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, ...] | list[int],
        *,
        width_multiplier: int = 1,
        zero_init_residual: bool = True,
        init: str = "torchvision",
        name: str = "resnet",
        padding: str = "torch",
    ) -> None:
        super().__init__()
        check_padding(padding)
        if block not in (BasicBlock, Bottleneck):
            raise ValueError(f"block must be torchvision BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {layers!r}")
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, int):
            raise ValueError(f"width_multiplier must be a positive int, got {width_multiplier!r}")
        if width_multiplier < 1:
            raise ValueError(f"width_multiplier must be a positive int, got {width_multiplier!r}")
        check_init(init)
        self.name = name
        self.width_multiplier = width_multiplier
        self.init = init
        self.zero_init_residual = zero_init_residual
        m = width_multiplier
        self.inplanes = 64 * m
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64 * m, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128 * m, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256 * m, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512 * m, layers[3], stride=2)
        self.out_channels = self.inplanes
        del self.inplanes
        self.reset_parameters()
        set_padding_(self, padding)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            # Projection shortcut; stride lives on the 3x3 conv of the block ("v1.5").
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        seq = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        seq += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*seq)

    def reset_parameters(self, init: str | None = None, *, zero_init_residual: bool | None = None):
        """Re-initialise all weights in place and reset the norms' running statistics.

        ``init`` / ``zero_init_residual`` default to the constructor's choices.
        """
        init = check_init(getattr(self, "init", "torchvision") if init is None else init)
        if zero_init_residual is None:
            zero_init_residual = getattr(self, "zero_init_residual", True)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                if init == "official":
                    trunc_normal_fan_in_(mod.weight)
                else:
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.modules.batchnorm._NormBase | nn.GroupNorm):
                if getattr(mod, "weight", None) is not None:
                    nn.init.ones_(mod.weight)
                    nn.init.zeros_(mod.bias)
                if isinstance(mod, nn.modules.batchnorm._NormBase):  # GroupNorm has no stats
                    mod.reset_running_stats()
        if zero_init_residual:
            for mod in self.modules():
                last = getattr(mod, "bn3", None) if isinstance(mod, Bottleneck) else None
                if isinstance(mod, BasicBlock):
                    last = mod.bn2
                if last is not None and getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Backbone expects images [B,3,H,W], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64m, H/4, W/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, C, H/32, W/32]
        return x

    forward_features = forward


def set_output_stride_(backbone: nn.Module, output_stride: int) -> nn.Module:
    """Trade the last strides for dilation so features come out at ``output_stride``, in place.

    ``32`` leaves the network as it is (the official DetCon backbone). ``16`` dilates ``layer4``
    (dilation 2), ``8`` dilates ``layer3`` and ``layer4`` (2 and 4), as torchvision's
    ``replace_stride_with_dilation``: the first block of a dilated stage keeps the previous
    dilation on its 3x3 conv (now stride 1), later blocks use the new one, and the projection
    shortcut loses its stride. Weights are unchanged (the same tensors fit every stride), so a
    checkpoint trained at one output stride loads at any other. Works for basic and bottleneck
    blocks. A lower output stride gives a finer feature grid (more mask cells) at the cost of
    running the dilated stages on 4x (16) or 16x (8) more positions.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    if getattr(backbone, "stride", 32) != 32:
        raise ValueError(f"backbone already has output stride {backbone.stride}; build a new one")
    stages = {32: (), 16: (("layer4", 2),), 8: (("layer3", 2), ("layer4", 4))}[output_stride]
    prev = 1
    for name, dilation in stages:
        for i, block in enumerate(getattr(backbone, name)):
            d = prev if i == 0 else dilation
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                    conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1
        prev = dilation
    # torch types Module.__setattr__'s value Tensor | Module; plain attributes work too
    backbone.stride = output_stride  # type: ignore[assignment]
    return backbone


def _is_strided(mod: nn.Module) -> bool:
    k, s = (nn.modules.utils._pair(v) for v in (mod.kernel_size, mod.stride))
    return max(s) > 1 and max(k) > 1


def set_padding_(backbone: nn.Module, padding: str) -> nn.Module:
    """Switch the padding of the strided layers of ``backbone`` to ``padding``, in place.

    ``"same"`` is the official haiku/TensorFlow behaviour (``padding='SAME'``, computed from
    the input size at every forward: for a stride-2 layer on an even size one more pixel is
    padded after than before, 0 / 1 for 3x3/2, 2 / 3 for the 7x7/2 stem). ``"torch"`` is
    torchvision's symmetric padding (3 for the stem, 1 for 3x3s). Which one is the default of a
    run is decided by the config (the official recipe uses ``"same"``); the library default is
    ``"torch"``.

    ``"same"`` replaces every plain ``nn.Conv2d`` with stride > 1 and kernel > 1 (the stem and
    the strided 3x3 convs of the first block of ``layer2..4``) by a :class:`SameConv2d` and
    every strided ``nn.MaxPool2d`` by a :class:`SameMaxPool2d`. Stride-1 convs are left alone:
    SAME on an odd kernel at stride 1 is symmetric, ``dilation * (k - 1) / 2`` on each side,
    which is what torchvision (and ``set_output_stride_``) already uses; 1x1 strided shortcuts
    need no padding under SAME at any size. The new modules share the parameter tensors of the
    old ones (an optimizer built before keeps working) and the ``state_dict`` keys and shapes
    are unchanged, so checkpoints and exports load in either mode. ``"torch"`` turns SAME
    modules back into plain ones. Works before or after ``set_output_stride_``, for basic and
    bottleneck blocks and with ``channels_last``. Sets ``backbone.padding``; returns
    ``backbone``.
    """
    check_padding(padding)
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if padding == "same":
                if type(child) is nn.Conv2d and _is_strided(child):
                    new = SameConv2d.from_conv(child)
                elif type(child) is nn.MaxPool2d and _is_strided(child):
                    new = SameMaxPool2d.from_pool(child)
            elif isinstance(child, SameConv2d):
                new = _conv_sharing(nn.Conv2d, child)
            elif isinstance(child, SameMaxPool2d):
                new = nn.MaxPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    ceil_mode=child.ceil_mode,
                )
                new.train(child.training)
            if new is not None:
                setattr(parent, name, new)
    # torch types Module.__setattr__'s value Tensor | Module; plain attributes work too
    backbone.padding = padding  # type: ignore[assignment]
    return backbone


def build_backbone(
    name: str,
    width_multiplier: int = 1,
    zero_init_residual: bool = True,
    *,
    init: str = "torchvision",
    channels_last: bool = False,
    padding: str = "torch",
) -> Backbone:
    """Build a randomly initialised backbone by name (never downloads weights).

    ``name`` is one of :func:`backbone_names`; see :class:`Backbone` for the other arguments.
    ``channels_last=True`` converts the parameters to the channels-last memory format.
    ``padding``: ``"torch"`` (default, torchvision's symmetric padding) or ``"same"`` (the
    official haiku/TensorFlow ``'SAME'`` padding; the config decides, and the official recipe
    uses ``"same"``), see :func:`set_padding_`.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(_SPECS)}")
    block, layers = _SPECS[name]
    net = Backbone(
        block,
        layers,
        width_multiplier=width_multiplier,
        zero_init_residual=zero_init_residual,
        init=init,
        name=name,
        padding=padding,
    )
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def load_torchvision_weights(backbone: Backbone, state_dict: Mapping[str, torch.Tensor]):
    """Load a torchvision ResNet ``state_dict`` into ``backbone``, strictly except ``fc.*``.

    Keys are matched as they are (no renaming). Every backbone key must be present and every
    key except ``fc.weight`` / ``fc.bias`` must be used; otherwise a ``ValueError`` lists
    exactly the missing and unexpected keys. Shape mismatches raise from ``load_state_dict``.
    Returns ``backbone``.
    """
    state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    expected = set(backbone.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:  # checked before loading, so a failure leaves backbone untouched
        raise ValueError(
            "torchvision state_dict does not match the backbone "
            f"({getattr(backbone, 'name', '?')}): missing={missing} unexpected={unexpected}"
        )
    backbone.load_state_dict(state, strict=True)
    return backbone
