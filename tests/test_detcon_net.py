import copy

import pytest
import torch
from torch import nn

from detcon.model import MLP, DetConNet, DetConOutput, build_backbone, make_target

GRID = (2, 2)  # a 64 px image on a stride-32 backbone


def _inputs(b=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 64, 64, generator=g)
    cells = torch.randint(0, 3, (b, *GRID), generator=g)
    ids = torch.randint(0, 3, (b, k), generator=g)
    return images, cells, ids


def _net(predictor=True, **kw):
    return DetConNet(
        build_backbone("resnet18"),
        proj_hidden=32,
        proj_dim=16,
        predictor=predictor,
        pred_hidden=24,
        **kw,
    )


def test_mlp_structure_and_batchnorm_over_all_vectors():
    mlp = MLP(6, 10, 4)
    mlp2 = copy.deepcopy(mlp)  # same weights, fresh running stats
    assert isinstance(mlp.bn1, nn.BatchNorm1d) and mlp.fc1.bias is not None and mlp.fc2.bias is None
    x = torch.randn(3, 5, 6)  # [B, K, C]
    out = mlp(x)
    assert out.shape == (3, 5, 4)
    # BN statistics over all B*K = 15 vectors: the running mean moved by momentum * batch mean
    h = mlp.fc1(x.reshape(15, 6))
    assert torch.allclose(mlp.bn1.running_mean, 0.1 * h.mean(0).detach(), atol=1e-6)
    # and the flattened call gives the same numbers
    assert torch.allclose(mlp2(x.reshape(15, 6)).reshape(3, 5, 4), out, atol=1e-6)
    # whereas BN over each image's K vectors separately gives different outputs
    per_image = torch.stack([mlp2(x[i]) for i in range(3)])
    assert not torch.allclose(per_image, out, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        mlp(torch.randn(3, 5))


def test_mlp_official_init():
    torch.manual_seed(0)
    mlp = MLP(400, 300, 8, init="official")
    sigma = 400**-0.5
    assert mlp.fc1.weight.abs().max() <= 2 * sigma + 1e-7 and torch.all(mlp.fc1.bias == 0)
    assert abs(mlp.fc1.weight.std().item() / sigma - 0.880) < 0.02
    with pytest.raises(ValueError, match="init"):
        MLP(4, 4, 4, init="he")


@pytest.mark.parametrize("predictor", [True, False])
def test_detcon_shapes_and_children(predictor):
    net = _net(predictor)
    images, cells, ids = _inputs()
    out = net(images, cells, ids)
    assert isinstance(out, DetConOutput)
    assert out.features.shape == (2, 512) and out.proj.shape == (2, 3, 16)
    if predictor:
        assert out.pred.shape == (2, 3, 16) and isinstance(net.predictor, MLP)
    else:
        assert out.pred is None and net.predictor is None
    prefixes = {k.split(".")[0] for k in net.state_dict()}
    assert prefixes == (
        {"backbone", "projector", "predictor"} if predictor else {"backbone", "projector"}
    )
    # features is the global spatial mean of the backbone output
    net.eval()
    with torch.no_grad():
        out = net(images, cells, ids)
        assert torch.allclose(out.features, net.backbone(images).mean((2, 3)), atol=1e-6)


def test_projection_uses_mask_pooled_features():
    net = _net().eval()
    images, cells, ids = _inputs()
    with torch.no_grad():
        from detcon.model import mask_pool

        pooled = mask_pool(net.backbone(images), cells, ids)
        out = net(images, cells, ids)
    assert torch.allclose(out.proj, net.projector(pooled), atol=1e-6)
    assert torch.allclose(out.pred, net.predictor(out.proj), atol=1e-6)


def test_grid_mismatch_error():
    net = _net()
    images, _, ids = _inputs()
    with pytest.raises(ValueError, match="backbone output grid"):
        net(images, torch.zeros(2, 7, 7, dtype=torch.long), ids)


def test_build_classmethod():
    net = DetConNet.build("resnet18", proj_hidden=8, proj_dim=4, predictor=False, init="official")
    assert net.backbone.name == "resnet18" and net.projector.in_dim == 512 and net.predictor is None


def test_make_target_copy_and_reinit():
    online = _net()
    target = make_target(online)
    assert target is not online and all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for (n, p), (_, q) in zip(online.named_parameters(), target.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n
    fresh = make_target(online, reinit=True)
    assert not torch.equal(fresh.backbone.conv1.weight, online.backbone.conv1.weight)
    assert not torch.equal(fresh.projector.fc1.weight, online.projector.fc1.weight)
    assert torch.all(fresh.backbone.layer1[0].bn2.weight == 0)  # zero-init residual preserved
    assert all(not p.requires_grad for p in fresh.parameters())


def test_weighted_batch_norm_equals_the_expanded_batch():
    from detcon.model.heads import weighted_batch_norm

    g = torch.Generator().manual_seed(4)
    rows = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([1, 3, 2, 1, 4])
    bn_a = nn.BatchNorm1d(7).double()
    with torch.no_grad():
        bn_a.weight.uniform_(0.5, 1.5)
        bn_a.bias.uniform_(-0.5, 0.5)
    bn_b = copy.deepcopy(bn_a)
    expanded = rows.repeat_interleave(counts, 0)  # [11, 7]: what the official batch holds
    want = bn_a(expanded)
    got = weighted_batch_norm(bn_b, rows, counts).repeat_interleave(counts, 0)
    torch.testing.assert_close(got, want)
    w = torch.randn(11, 7, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((want * w).sum(), [rows, bn_a.weight, bn_a.bias])
    gb = torch.autograd.grad((got * w).sum(), [rows, bn_b.weight, bn_b.bias])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn_b, name), getattr(bn_a, name))
    bn_b.eval()
    torch.testing.assert_close(weighted_batch_norm(bn_b, rows, counts), bn_b(rows))


@pytest.mark.parametrize("predictor", [True, False])
def test_distinct_heads_equal_heads_on_every_row(predictor):
    """Heads on distinct (image, id) rows with count-weighted BN = heads on all B*K rows:
    outputs, every parameter's gradient and the running statistics."""
    torch.manual_seed(0)
    fast = _net(predictor=predictor).double()
    slow = copy.deepcopy(fast)
    slow.distinct_heads = False
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 64, 64, generator=g, dtype=torch.float64)
    cells = torch.randint(0, 3, (3, *GRID), generator=g)
    ids = torch.randint(0, 3, (3, 8), generator=g)  # 8 draws among <= 3 regions: duplicates
    out_f, out_s = fast(images, cells, ids), slow(images, cells, ids)
    torch.testing.assert_close(out_f.proj, out_s.proj)
    if predictor:
        torch.testing.assert_close(out_f.pred, out_s.pred)
    w = torch.randn_like(out_s.proj)
    last = (lambda o: o.pred) if predictor else (lambda o: o.proj)  # noqa: E731
    ((last(out_f) * w).sum() + out_f.proj.square().sum()).backward()
    ((last(out_s) * w).sum() + out_s.proj.square().sum()).backward()
    for (name, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters(), strict=True):
        torch.testing.assert_close(pf.grad, ps.grad, msg=name)
    for (name, bf), (_, bs) in zip(fast.named_buffers(), slow.named_buffers(), strict=True):
        torch.testing.assert_close(bf, bs, msg=name)
