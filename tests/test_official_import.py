"""Import of the official haiku DetCon / BYOL checkpoints (``detcon.official``), without JAX.

Fixtures are written the way the official code writes them (``np.save`` of a dict as an object
array, ``pickle.dump`` of a BYOL experiment state whose namedtuple class lives in a module that
does not exist at load time), with the exact haiku names and shapes recorded from real dm-haiku
in ``tests/fixtures/official_haiku_inventory.json`` (``scripts/fixtures/make_official_fixture.py``).
The forward checks compare with a reference of the haiku ResNet v1 torso written here directly
from haiku's ``BlockV1`` / the official ``ResNetTorso`` (NHWC, explicit TF SAME padding).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detcon.model.backbone import build_backbone
from detcon.official import (
    OfficialFormatError,
    UnsafeCheckpointError,
    backbone_from_converted,
    convert,
    expected_official_names,
    inspect_official,
    load_backbone,
    load_heads,
    safe_load_official,
    unpickle,
)

INVENTORY = json.loads(
    (Path(__file__).parent / "fixtures" / "official_haiku_inventory.json").read_text()
)["models"]


# --------------------------------------------------------------------------- fixture builders


def _haiku_tree(model: str, seed: int = 0, dtype=np.float32, heads: dict | None = None):
    """Random ``(params, state)`` with the real haiku names/shapes of ``model`` (the inventory),
    plausible values, and ``hidden`` != ``average`` so that using the wrong EMA is caught."""
    rng = np.random.default_rng(seed)
    inv = INVENTORY[model]
    param_inv, state_inv = dict(inv["params"]), dict(inv["state"])
    if heads is not None:  # replace the inventory's heads by small custom ones
        param_inv = {k: v for k, v in param_inv.items() if not k.startswith(("proj", "pred"))}
        state_inv = {k: v for k, v in state_inv.items() if not k.startswith(("proj", "pred"))}
        for name, (d_in, d_hid, d_out) in heads.items():
            param_inv[f"{name}/linear"] = {"w": [d_in, d_hid], "b": [d_hid]}
            param_inv[f"{name}/batch_norm"] = {"scale": [1, 1, d_hid], "offset": [1, 1, d_hid]}
            param_inv[f"{name}/linear_1"] = {"w": [d_hid, d_out]}
            for ema in ("mean_ema", "var_ema"):
                state_inv[f"{name}/batch_norm/~/{ema}"] = {
                    "average": [1, 1, d_hid],
                    "hidden": [1, 1, d_hid],
                    "counter": [],
                }
    params, state = {}, {}
    for mod, entries in param_inv.items():
        d = params[mod] = {}
        for name, shape in entries.items():
            if name == "w":
                fan_in = int(np.prod(shape[:-1]))
                d[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
            elif name == "scale":
                d[name] = rng.uniform(0.5, 1.5, shape).astype(dtype)
            else:  # offset, b
                d[name] = (0.1 * rng.standard_normal(shape)).astype(dtype)
    for mod, entries in state_inv.items():
        d = state[mod] = {}
        for name, shape in entries.items():
            if name == "counter":
                d[name] = np.asarray(7, np.int32)
            elif mod.endswith("var_ema"):
                d[name] = rng.uniform(0.5, 1.5, shape).astype(dtype)
            else:
                d[name] = (0.1 * rng.standard_normal(shape)).astype(dtype)
            if name == "hidden":
                d[name] = (d[name] * 0.5 + 3.0).astype(dtype)
    return params, state


def _merged(params, state):
    out = {k: dict(v) for k, v in params.items()}
    for k, v in state.items():
        out.setdefault(k, {}).update(v)
    return out


def _np_save_dict(path: Path, obj) -> Path:
    np.save(path, np.array(obj, dtype=object), allow_pickle=True)
    return path


# --------------------------------------------------------------------------- haiku reference


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TF 'SAME' padding of an NHWC tensor (out = ceil(n / s), extra pixel after)."""
    pads = []
    for n in (x.shape[2], x.shape[1]):  # F.pad order: last dim (W) first
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x.permute(0, 3, 1, 2), pads, value=value).permute(0, 2, 3, 1)


class _HaikuRef:
    """The official v1 torso forward (eval mode, ``final_mean_pool=False``), NHWC."""

    def __init__(self, params, state, prefix: str, dtype=torch.float64):
        self.p, self.s, self.prefix, self.dtype = params, state, prefix, dtype

    def t(self, a):
        return torch.as_tensor(np.asarray(a), dtype=self.dtype)

    def conv(self, x, mod, stride):
        w = self.t(self.p[mod]["w"])  # HWIO
        x = _same_pad(x, w.shape[0], stride)
        y = F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), stride=stride)
        return y.permute(0, 2, 3, 1)

    def bn(self, x, mod):  # haiku eval: (x - mean) * rsqrt(var + eps) * scale + offset
        mean = self.t(self.s[mod + "/~/mean_ema"]["average"])
        var = self.t(self.s[mod + "/~/var_ema"]["average"])
        scale, offset = self.t(self.p[mod]["scale"]), self.t(self.p[mod]["offset"])
        return (x - mean) * torch.rsqrt(var + 1e-5) * scale + offset

    def block(self, x, mod, stride):
        shortcut = x
        if mod + "/~/shortcut_conv" in self.p:
            shortcut = self.bn(
                self.conv(x, mod + "/~/shortcut_conv", stride), mod + "/~/shortcut_batchnorm"
            )
        bottleneck = mod + "/~/conv_2" in self.p
        n = 3 if bottleneck else 2
        strides = (1, stride, 1) if bottleneck else (stride, 1)
        out = x
        for i in range(n):
            out = self.bn(self.conv(out, f"{mod}/~/conv_{i}", strides[i]), f"{mod}/~/batchnorm_{i}")
            if i < n - 1:
                out = torch.relu(out)
        return torch.relu(out + shortcut)

    def __call__(self, images_nchw: torch.Tensor) -> torch.Tensor:
        p = self.prefix + "/~/"
        x = images_nchw.to(self.dtype).permute(0, 2, 3, 1)
        x = torch.relu(self.bn(self.conv(x, p + "initial_conv", 2), p + "initial_batchnorm"))
        x = _same_pad(x, 3, 2, value=float("-inf"))
        x = F.max_pool2d(x.permute(0, 3, 1, 2), 3, 2).permute(0, 2, 3, 1)
        for g, stride in enumerate((1, 2, 2, 2)):
            b = 0
            while f"{p}block_group_{g}/~/block_{b}/~/conv_0" in self.p:
                x = self.block(x, f"{p}block_group_{g}/~/block_{b}", stride if b == 0 else 1)
                b += 1
        return x.permute(0, 3, 1, 2)  # NCHW for comparison


def _mlp_ref(params, state, mod, x):
    """Haiku ``networks.MLP`` at eval: linear -> batch_norm -> relu -> linear_1 (float64)."""

    def a(v):
        return np.asarray(v, np.float64)

    h = x @ a(params[mod + "/linear"]["w"]) + a(params[mod + "/linear"]["b"])
    bn = mod + "/batch_norm"
    mean = a(state[bn + "/~/mean_ema"]["average"]).reshape(-1)
    var = a(state[bn + "/~/var_ema"]["average"]).reshape(-1)
    h = (h - mean) / np.sqrt(var + 1e-5) * a(params[bn]["scale"]).reshape(-1)
    h = np.maximum(h + a(params[bn]["offset"]).reshape(-1), 0)
    return h @ a(params[mod + "/linear_1"]["w"])


def _check_forward(net, params, state, prefix, sizes=((2, 64, 64), (1, 45, 61))):
    ref = _HaikuRef(params, state, prefix)
    net = net.double()
    g = torch.Generator().manual_seed(0)
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)
        with torch.no_grad():
            got, want = net(x), ref(x)
        assert got.shape == want.shape == (b, net.out_channels, -(-h // 32), -(-w // 32))
        scale = want.abs().max().item()
        assert scale > 1e-3
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * scale)


# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    "model,arch", [("ResNet18", "resnet18"), ("ResNet50", "resnet50"), ("ResNet200", "resnet200")]
)
def test_expected_names_equal_real_haiku_inventory(model, arch):
    inv = INVENTORY[model]
    merged: dict[str, set] = collections.defaultdict(set)
    for part in ("params", "state"):
        for mod, entries in inv[part].items():
            if mod.startswith("res_net"):
                merged[mod] |= set(entries)
    assert {m: sorted(v) for m, v in merged.items()} == expected_official_names(arch)
    prefix = arch.replace("resnet", "res_net")
    assert inv["params"][f"{prefix}/~/initial_conv"] == {"w": [7, 7, 3, 64]}
    assert inv["params"][f"{prefix}/~/initial_batchnorm"]["scale"] == [1, 1, 1, 64]


def test_real_haiku_head_names():
    inv = INVENTORY["ResNet50"]
    assert inv["params"]["projector/linear"] == {"b": [4096], "w": [2048, 4096]}
    assert inv["params"]["projector/batch_norm"] == {"offset": [1, 1, 4096], "scale": [1, 1, 4096]}
    assert inv["params"]["projector/linear_1"] == {"w": [4096, 256]}
    assert inv["params"]["predictor/linear"]["w"] == [256, 4096]
    assert inv["params"]["classifier"] == {"b": [1000], "w": [2048, 1000]}
    assert set(inv["state"]["projector/batch_norm/~/mean_ema"]) == {"average", "counter", "hidden"}


@pytest.mark.parametrize(
    "arch,width", [("resnet34", 1), ("resnet101", 2), ("resnet152", 1), ("resnet200", 2)]
)
def test_inspect_infers_depth_and_width(arch, width):
    names = expected_official_names(arch, prefix="outer/~/encoder")
    tree = {m: {n: np.zeros(0, np.float32) for n in ns} for m, ns in names.items()}
    tree["outer/~/encoder/~/initial_conv"]["w"] = np.zeros((7, 7, 3, 64 * width), np.float32)
    info = inspect_official({"params": tree})
    assert info["arch"] == arch and info["width_multiplier"] == width
    assert info["prefix"] == "outer/~/encoder"
    assert info["bottleneck"] == (arch != "resnet34")
    assert info["layer1_projection"] == (arch == "resnet34")


# --------------------------------------------------------------------------- backbone


def test_resnet18_npy_merged_forward_matches_haiku(tmp_path):
    params, state = _haiku_tree("ResNet18", seed=1)
    path = _np_save_dict(tmp_path / "r18.npy", _merged(params, state))
    try:
        loaded = safe_load_official(path)
        assert isinstance(loaded, dict) and "res_net18/~/initial_conv" in loaded
        net = load_backbone(path, arch="resnet18")
    finally:
        path.unlink()
    assert not net.training
    # the official ResNet18 has a projection on block_group_0/block_0: an extra downsample
    assert net.official_info["layer1_projection"] is True
    extra = set(net.state_dict()) - set(build_backbone("resnet18").state_dict())
    assert extra == {
        f"layer1.0.downsample.{k}"
        for k in (
            "0.weight",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
        )
    }
    assert int(net.bn1.num_batches_tracked) == 7
    _check_forward(net, params, state, "res_net18")


def test_resnet18_haiku_nets_layout_is_torchvision(tmp_path):
    """hk.nets.ResNet18 (no projection in group 0) maps onto exactly torchvision's keys."""
    params, state = _haiku_tree("ResNet18", seed=2)
    drop = "res_net18/~/block_group_0/~/block_0/~/shortcut_"
    params = {k: v for k, v in params.items() if not k.startswith(drop)}
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    net = load_backbone({"params": params, "state": state})
    assert set(net.state_dict()) == set(build_backbone("resnet18").state_dict())
    _check_forward(net, params, state, "res_net18", sizes=((1, 64, 64),))


def test_resnet50_nested_forward_matches_haiku():
    params, state = _haiku_tree("ResNet50", seed=3)
    net = load_backbone({"params": params, "state": state}, arch="resnet50")
    ref_keys = build_backbone("resnet50").state_dict()
    assert list(net.state_dict()) == list(ref_keys)  # exactly torchvision's layout
    assert net.padding == "same" and net.official_info["layer1_projection"] is False
    w = params["res_net50/~/block_group_1/~/block_0/~/conv_1"]["w"]
    torch.testing.assert_close(
        net.layer2[0].conv2.weight, torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    )
    torch.testing.assert_close(
        net.layer2[0].conv2.stride, (2, 2)
    )  # the stride sits on the 3x3 conv in both
    _check_forward(net, params, state, "res_net50", sizes=((1, 64, 64), (1, 50, 38)))


def test_heads_and_convert_resnet50():
    params, state = _haiku_tree(
        "ResNet50", seed=4, heads={"projector": (2048, 64, 16), "predictor": (16, 64, 16)}
    )
    ck = {"params": params, "state": state}
    heads = load_heads(ck)
    x = np.random.default_rng(0).standard_normal((3, 5, 2048))  # [B, K, D] as in DetCon
    for name, d_in in (("projector", 2048), ("predictor", 16)):
        mlp = heads[name]
        assert not mlp.training and mlp.fc1.in_features == d_in and mlp.fc2.out_features == 16
        inp = x if name == "projector" else x[..., :16]
        with torch.no_grad():
            got = mlp.double()(torch.from_numpy(inp))
        want = _mlp_ref(params, state, name, inp)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)
    conv = convert(ck)
    assert conv["arch"] == "resnet50" and conv["width_multiplier"] == 1
    assert conv["padding"] == "same" and conv["layer1_projection"] is False
    assert set(conv["projector"]) == set(heads["projector"].state_dict())
    assert conv["classifier"]["weight"].shape == (1000, 2048)
    net = backbone_from_converted(conv)
    ref = load_backbone(ck)
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


# --------------------------------------------------------------------------- BYOL pickle


@pytest.fixture
def fake_byol_modules():
    """``byol.byol_experiment._ByolExperimentState`` and a LARS state, importable only while
    pickling; removed before loading (users do not have them)."""
    names = ["byol", "byol.byol_experiment", "byol.utils", "byol.utils.optimizers"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    exp_state = collections.namedtuple(
        "_ByolExperimentState",
        ["online_params", "target_params", "online_state", "target_state", "opt_state"],
    )
    exp_state.__module__ = "byol.byol_experiment"
    lars = collections.namedtuple("LarsState", ["mu"])
    lars.__module__ = "byol.utils.optimizers"
    mods["byol.byol_experiment"]._ByolExperimentState = exp_state
    mods["byol.utils.optimizers"].LarsState = lars
    sys.modules.update(mods)
    try:
        yield exp_state, lars
    finally:
        for n in names:
            if saved[n] is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = saved[n]


@pytest.mark.slow
def test_byol_pickle_online_and_target(tmp_path, fake_byol_modules):
    exp_state, lars = fake_byol_modules
    heads = {"projector": (512, 32, 8), "predictor": (8, 32, 8)}
    on_p, on_s = _haiku_tree("ResNet18", seed=5, heads=heads)
    tg_p, tg_s = _haiku_tree("ResNet18", seed=6, dtype=np.float16, heads=heads)
    tg_p = {k: v for k, v in tg_p.items() if not k.startswith("predictor")}  # target: no predictor
    tg_s = {k: v for k, v in tg_s.items() if not k.startswith("predictor")}
    conv0 = "res_net18/~/initial_conv"
    opt = lars(mu={conv0: {"w": np.zeros((7, 7, 3, 64), np.float32)}})  # same names: ignored
    st = exp_state(on_p, tg_p, on_s, tg_s, opt)
    path = tmp_path / "pretrain_res18.pkl"
    with open(path, "wb") as f:
        # BYOL's checkpointer: pickle.dump(..., protocol=2) of device_get'd numpy trees
        data = {"experiment_state": st, "step": np.int64(3), "rng": np.zeros(2, np.uint32)}
        pickle.dump(data, f, protocol=2)
    for n in ["byol", "byol.byol_experiment", "byol.utils", "byol.utils.optimizers"]:
        sys.modules.pop(n)
    try:
        loaded = safe_load_official(path)
        es = loaded["experiment_state"]
        assert type(es) is dict and list(es) == list(exp_state._fields)
        assert int(loaded["step"]) == 3
        online = load_backbone(path)
        target = load_backbone(loaded, which="target")
        heads_on, heads_tg = load_heads(path), load_heads(loaded, which="target")
        conv_t = convert(path, which="target")
    finally:
        path.unlink()
    for net, p in ((online, on_p), (target, tg_p)):
        want = torch.from_numpy(p[conv0]["w"].astype(np.float32).transpose(3, 2, 0, 1).copy())
        torch.testing.assert_close(net.conv1.weight, want)
        assert net.conv1.weight.dtype == torch.float32
    assert heads_on["predictor"] is not None and heads_tg["predictor"] is None
    assert heads_tg["projector"].fc1.weight.shape == (32, 512)
    assert conv_t["predictor"] is None and conv_t["source"]["which"] == "target"
    _check_forward(target, tg_p, tg_s, "res_net18", sizes=((1, 40, 40),))


def test_which_target_without_target_is_an_error():
    params, state = _haiku_tree("ResNet18", seed=7)
    with pytest.raises(OfficialFormatError, match="no target network"):
        load_backbone({"params": params, "state": state}, which="target")
    with pytest.raises(ValueError, match="which must be"):
        load_backbone({"params": params}, which="ema")


def test_old_haiku_flatmapping_pickle(tmp_path):
    """haiku <= 0.0.4 pickled params as FlatMapping(mapping) / frozendict(mapping)."""
    names = ["haiku", "haiku._src", "haiku._src.data_structures"]
    fakes = {n: types.ModuleType(n) for n in names}
    mod = fakes["haiku._src.data_structures"]

    class FlatMapping(dict):
        def __reduce__(self):
            return FlatMapping, (dict(self),)

    FlatMapping.__module__ = mod.__name__
    FlatMapping.__qualname__ = "FlatMapping"
    mod.FlatMapping = FlatMapping
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(fakes)
    try:
        data = pickle.dumps({"params": FlatMapping({"m": FlatMapping({"w": np.ones(3)})})})
    finally:
        for n in names:
            if saved[n] is None:
                del sys.modules[n]
            else:
                sys.modules[n] = saved[n]
    assert b"haiku._src.data_structures" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    loaded = safe_load_official(path)
    assert type(loaded["params"]) is dict and type(loaded["params"]["m"]) is dict
    np.testing.assert_array_equal(loaded["params"]["m"]["w"], np.ones(3))


# --------------------------------------------------------------------------- strictness


def _r18_tree(seed=8):
    params, state = _haiku_tree("ResNet18", seed=seed)
    return params, state


def test_strict_missing_unexpected_and_shape_errors():
    params, state = _r18_tree()
    gone = "res_net18/~/block_group_2/~/block_1/~/batchnorm_0"
    p = {k: v for k, v in params.items() if k != gone}
    with pytest.raises(
        OfficialFormatError,
        match=f"missing in checkpoint: {gone}/scale, {gone}/offset; torch keys not filled",
    ):
        load_backbone({"params": p, "state": state})
    p = dict(
        params, **{"res_net18/~/block_group_3/~/block_2/~/conv_0": {"w": np.zeros((3, 3, 1, 1))}}
    )
    with pytest.raises(
        OfficialFormatError, match=r"blocks per group \(2, 2, 2, 3\) \(basic\) match none"
    ):
        load_backbone({"params": p, "state": state})
    p = dict(params, **{"res_net18/~/extra": {"w": np.zeros(3)}})
    with pytest.raises(
        OfficialFormatError, match=r"unexpected \(unused\) in checkpoint: res_net18/~/extra/w"
    ):
        load_backbone({"params": p, "state": state})
    bad = "res_net18/~/block_group_1/~/block_0/~/conv_1"
    p = dict(params, **{bad: {"w": params[bad]["w"][:, :, :5]}})
    with pytest.raises(OfficialFormatError, match=f"{bad}/w -> layer2.0.conv2.weight: shape"):
        load_backbone({"params": p, "state": state})
    s = {k: v for k, v in state.items() if not k.endswith("initial_batchnorm/~/var_ema")}
    with pytest.raises(OfficialFormatError, match="initial_batchnorm/~/var_ema/average"):
        load_backbone({"params": params, "state": s})
    with pytest.raises(OfficialFormatError, match="holds a resnet18"):
        load_backbone({"params": params, "state": state}, arch="resnet34")


def test_outer_module_name_is_detected():
    params, state = _r18_tree(seed=9)

    def rename(tree):
        return {k.replace("res_net18", "detcon/~/my_encoder", 1): v for k, v in tree.items()}

    net = load_backbone({"online_params": rename(params), "online_state": rename(state)})
    assert net.official_info["prefix"] == "detcon/~/my_encoder"
    want = params["res_net18/~/initial_conv"]["w"].transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(net.conv1.weight.detach().numpy(), want)


def test_flat_keys_and_v2_refusal():
    params, state = _r18_tree(seed=11)
    flat = {f"{m}/{n}": v for m, d in _merged(params, state).items() for n, v in d.items()}
    net = load_backbone({"model": flat})
    want = params["res_net18/~/block_group_3/~/block_1/~/conv_1"]["w"].transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(net.layer4[1].conv2.weight.detach().numpy(), want)
    v2 = {k: v for k, v in params.items() if "initial_batchnorm" not in k}
    v2["res_net18/~/final_batchnorm"] = params["res_net18/~/initial_batchnorm"]
    with pytest.raises(OfficialFormatError, match="v2 torsos are not supported"):
        load_backbone({"params": v2, "state": state})


def test_two_torsos_are_ambiguous():
    params, state = _r18_tree(seed=10)
    twin = {k.replace("res_net18", "res_net18_1"): v for k, v in params.items()}
    with pytest.raises(OfficialFormatError, match="exactly one ResNet torso"):
        load_backbone({"params": {**params, **twin}, "state": state})


# --------------------------------------------------------------------------- safety


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvilOpen:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["pkl", "npy", "npy_no_suffix"])
def test_malicious_os_system_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = {"params": {"m": {"w": np.zeros(2)}}, "x": _Evil(f"touch {marker}")}
    path = tmp_path / ("evil.pkl" if kind == "pkl" else "evil.npy")
    if kind == "pkl":
        path.write_bytes(pickle.dumps(payload))
    else:
        _np_save_dict(path, payload)
        if kind == "npy_no_suffix":
            path = path.rename(tmp_path / "evil.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load (os|posix|nt)\.system from"):
        safe_load_official(path)
    with pytest.raises(UnsafeCheckpointError):
        load_backbone(path)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, ValueError)


def test_malicious_open_and_stdlib_records_are_refused(tmp_path):
    target = tmp_path / "created.txt"
    path = tmp_path / "evil_open.pkl"
    path.write_bytes(pickle.dumps([_EvilOpen(str(target))]))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load (builtins|io)\.open"):
        safe_load_official(path)
    assert not target.exists()
    # a State-looking name in a stdlib module is not turned into a record
    path.write_bytes(b"\x80\x03cos\nFooState\nq\x00)\x81q\x01.")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load os.FooState"):
        safe_load_official(path)
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("builtins", "getattr")]:
        path.write_bytes(f"\x80\x03c{module}\n{name}\nq\x00.".encode("latin1"))
        with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
            safe_load_official(path)


def test_jax_array_pickle_becomes_numpy(tmp_path):
    """A pickled jax Array (``jax._src.array._reconstruct_array``) loads as numpy, no jax."""
    fake = tmp_path / "fake_jax"
    (fake / "jax" / "_src").mkdir(parents=True)
    (fake / "jax" / "__init__.py").write_text("")
    (fake / "jax" / "_src" / "__init__.py").write_text("")
    (fake / "jax" / "_src" / "array.py").write_text(
        "def _reconstruct_array(fun, args, arr_state, aval_state):\n    raise RuntimeError\n"
    )
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    fun, args, arr_state = value.__reduce__()

    class _JaxLike:
        def __reduce__(self):
            import jax._src.array as ja

            return ja._reconstruct_array, (fun, args, arr_state, {"weak_type": False})

    saved = {n: m for n, m in sys.modules.items() if n == "jax" or n.startswith("jax.")}
    for n in saved:
        del sys.modules[n]
    sys.path.insert(0, str(fake))
    try:
        data = pickle.dumps({"rng": _JaxLike()}, protocol=2)
    finally:
        sys.path.remove(str(fake))
        for n in [n for n in sys.modules if n == "jax" or n.startswith("jax.")]:
            del sys.modules[n]
        sys.modules.update(saved)
    path = tmp_path / "jax.pkl"
    path.write_bytes(data)
    got = safe_load_official(path)["rng"]
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, value)


def test_numeric_npy_reads_without_pickle(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "a.npy"
    np.save(path, arr)
    got = safe_load_official(path)
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == np.float32


def test_record_class_is_inert():
    rec = unpickle._record_class("byol.byol_experiment", "_ByolExperimentState")
    r = rec(1, 2, 3, 4, 5)
    assert dict(r) == dict(zip(unpickle._EXPERIMENT_FIELDS, range(1, 6), strict=True))
    other = unpickle._record_class("somepkg.mod", "ThingState")(1, b=2)
    assert dict(other) == {"field_0": 1, "b": 2}


# --------------------------------------------------------------------------- real haiku (opt-in)

_E2E = os.environ.get("DETCON_OFFICIAL_E2E")


@pytest.mark.skipif(not _E2E, reason="set DETCON_OFFICIAL_E2E to a make_official_fixture --e2e dir")
@pytest.mark.parametrize("encoder", ["ResNet50", "ResNet18"])
def test_real_haiku_checkpoint_end_to_end(encoder):
    """Compare with a checkpoint and eval output written by real haiku (large, not committed)."""
    path = Path(_E2E) / f"{encoder}.npy"
    if not path.exists():
        pytest.skip(f"{path} not written")
    io = np.load(Path(_E2E) / f"{encoder}_io.npz")
    net = load_backbone(path, arch=encoder.lower())
    with torch.no_grad():
        got = net(torch.from_numpy(io["x"]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    want = io["y"]
    if want.ndim == 2:  # the official ResNet18 always mean-pools
        got = got.mean(axis=(1, 2))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
