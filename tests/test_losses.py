"""DetCon loss: hand-computed cases, a slow reference written from the definition, gradients."""

import math

import pytest
import torch

from detcon.losses import DetConLoss, detcon_loss


def _unit(x):
    # The normalisation of the definition: x / sqrt(max(|x|^2, 1e-12)).
    return x / torch.sqrt(torch.clamp((x * x).sum(), min=1e-12))


def reference_loss(p1, p2, t1, t2, pid1, pid2, tid1, tid2, tau, local_negatives, offset):
    """Eq. 3 of the paper, row by row and column by column, with the official conventions:
    candidates are the targets of both views of all images; positives are the other view's
    masks of the same image with the same id; same-view same-image same-id columns are
    removed; without local negatives every non-positive column of the own image is removed.
    Each row's cross-entropy (labels 1/num_pos) is weighted by 1/(draws of its id), rows with
    no positive give 0, and each view is averaged over all its rows; the two views add up."""
    total = 0.0 * p1.sum()  # a tensor tied to the inputs even when no row has a positive
    views = [(p1, pid1, t2, tid2, t1, tid1), (p2, pid2, t1, tid1, t2, tid2)]
    for pred, pid, t_other, tid_other, t_same, tid_same in views:
        B, K, _ = pred.shape
        N, Kt, _ = t_other.shape
        view_sum = 0.0
        for b in range(B):
            g = b + offset
            for k in range(K):
                q = _unit(pred[b, k])
                i = int(pid[b, k])
                logits, positive = [], []
                for t, tid, is_other in ((t_other, tid_other, True), (t_same, tid_same, False)):
                    for u in range(N):
                        for m in range(Kt):
                            own_image = u == g
                            same_id = int(tid[u, m]) == i
                            is_pos = is_other and own_image and same_id
                            if own_image and not is_other and same_id:
                                continue
                            if not local_negatives and own_image and not is_pos:
                                continue
                            logits.append(torch.dot(q, _unit(t[u, m])) / tau)
                            positive.append(is_pos)
                num_pos = sum(positive)
                if num_pos == 0:
                    continue
                log_z = torch.logsumexp(torch.stack(logits), 0)
                ce = sum(log_z - s for s, ok in zip(logits, positive, strict=True) if ok) / num_pos
                dup = sum(int(pid[b, kk]) == i for kk in range(K))
                view_sum = view_sum + ce / dup
        total = total + view_sum / (B * K)
    return total


def _random_case(B, N, K, D, num_ids, seed, dtype=torch.float64, Kt=None):
    g = torch.Generator().manual_seed(seed)
    Kt = K if Kt is None else Kt
    p1, p2 = (torch.randn(B, K, D, generator=g, dtype=dtype) for _ in range(2))
    t1, t2 = (torch.randn(N, Kt, D, generator=g, dtype=dtype) for _ in range(2))
    pid1, pid2 = (torch.randint(0, num_ids, (B, K), generator=g) for _ in range(2))
    tid1, tid2 = (torch.randint(0, num_ids, (N, Kt), generator=g) for _ in range(2))
    return p1, p2, t1, t2, pid1, pid2, tid1, tid2


@pytest.mark.parametrize("tau", [0.1, 0.37, 2.0])
@pytest.mark.parametrize("B", [1, 2, 5])
def test_identical_embeddings_one_mask(B, tau):
    # 2B columns per row, one excluded (own target), all logits equal, one positive.
    x = torch.full((B, 1, 8), 0.3)
    ids = torch.zeros(B, 1, dtype=torch.long)
    loss = detcon_loss(x, x, x, x, ids, ids, ids, ids, temperature=tau)
    assert loss.item() == pytest.approx(2 * math.log(2 * B - 1), rel=1e-6, abs=1e-6)


def test_hand_computed_one_image():
    e = torch.eye(2).unsqueeze(0)  # [1,2,2]: mask 0 -> (1,0), mask 1 -> (0,1), both views
    ids = torch.tensor([[0, 1]])
    # Each row: positive logit 1, one negative per view block at 0, own target excluded.
    loss = detcon_loss(e, e, e, e, ids, ids, ids, ids, temperature=1.0)
    assert loss.item() == pytest.approx(2 * (math.log(math.e + 2) - 1), rel=1e-6)
    # Without local negatives only the positive column is left: ce = 0.
    loss = detcon_loss(e, e, e, e, ids, ids, ids, ids, temperature=1.0, local_negatives=False)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_duplicates_and_scaling():
    # View 1: two draws of id 0, both (3,0) -> unit (1,0). View 2: id 0 at (0,2), id 1 at (2,0).
    p1 = torch.tensor([[[3.0, 0.0], [3.0, 0.0]]])
    p2 = torch.tensor([[[0.0, 2.0], [2.0, 0.0]]])
    id1, id2 = torch.tensor([[0, 0]]), torch.tensor([[0, 1]])
    loss = detcon_loss(p1, p2, p1, p2, id1, id2, id1, id2, temperature=0.5)
    # View 1 rows: positive logit 0, negative logit 2, both same-view columns excluded;
    # weight 1/2 each -> L1 = log(1 + e^2) / 2. View 2 row 0: two positives (labels 1/2) at 0,
    # one negative at 0 -> log 3; row 1 has no positive -> L2 = log(3) / 2.
    expected = (math.log(1 + math.e**2) + math.log(3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("local_negatives", [True, False])
@pytest.mark.parametrize(
    "B,N,K,Kt,offset,num_ids",
    [(2, 2, 3, 3, 0, 3), (2, 5, 3, 3, 2, 4), (3, 3, 4, 4, 0, 2), (1, 3, 2, 3, 2, 2)],
)
def test_matches_reference(B, N, K, Kt, offset, num_ids, local_negatives):
    seed = 100 * B + 10 * N + offset + local_negatives
    args = _random_case(B, N, K, 5, num_ids, seed=seed, Kt=Kt)
    inputs = [a.requires_grad_() for a in args[:4]]
    kw = dict(temperature=0.2, local_negatives=local_negatives, batch_offset=offset)
    fast = detcon_loss(*inputs, *args[4:], **kw)
    slow = reference_loss(*inputs, *args[4:], 0.2, local_negatives, offset)
    assert fast.dtype == torch.float64 and slow.item() > 0
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    g_fast = torch.autograd.grad(fast, inputs)
    g_slow = torch.autograd.grad(slow, inputs)
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_reference_case_has_duplicates_and_unmatched_rows():
    # Guard that the random cases above exercise the interesting paths.
    _, _, _, _, pid1, _, _, tid2 = _random_case(2, 5, 3, 5, 4, seed=202)
    dup = (pid1[:, :, None] == pid1[:, None, :]).sum(-1)
    own = tid2[2:4]
    matched = (pid1[:, :, None] == own[:, None, :]).any(-1)
    assert (dup > 1).any() and (~matched).any() and matched.any()


def test_self_targets_detcon_s_matches_reference():
    # DetCon-S: targets are the predictions themselves, gradients flow through both roles.
    p1, p2, _, _, pid1, pid2, _, _ = _random_case(3, 3, 3, 4, 3, seed=5)
    p1.requires_grad_()
    p2.requires_grad_()
    fast = detcon_loss(p1, p2, p1, p2, pid1, pid2, pid1, pid2, temperature=0.3)
    slow = reference_loss(p1, p2, p1, p2, pid1, pid2, pid1, pid2, 0.3, True, 0)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(
        torch.autograd.grad(fast, (p1, p2)), torch.autograd.grad(slow, (p1, p2)), strict=True
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("local_negatives", [True, False])
def test_gradcheck_float64(local_negatives):
    args = _random_case(2, 3, 2, 3, 2, seed=11)
    inputs = tuple(a.requires_grad_() for a in args[:4])

    def f(*x):
        return detcon_loss(
            *x, *args[4:], temperature=0.5, local_negatives=local_negatives, batch_offset=1
        )

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_duplicate_draws_sum_to_one_unit():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(1, 1, 6, generator=g)
    other = torch.randn(1, 1, 6, generator=g)
    t1, t2 = torch.randn(1, 2, 6, generator=g), torch.randn(1, 2, 6, generator=g)
    tid1, tid2 = torch.tensor([[0, 3]]), torch.tensor([[0, 2]])
    p2, pid2 = torch.cat([other, other], 1), torch.tensor([[2, 2]])
    # Two copies of id 0 vs one copy plus an unmatched row (id 7): the same loss.
    twice = detcon_loss(torch.cat([v, v], 1), p2, t1, t2, torch.tensor([[0, 0]]), pid2, tid1, tid2)
    once = detcon_loss(
        torch.cat([v, other], 1), p2, t1, t2, torch.tensor([[0, 7]]), pid2, tid1, tid2
    )
    assert twice.item() == pytest.approx(once.item(), rel=1e-6)
    assert once.item() > 0


def test_unmatched_rows_count_in_denominator():
    args = _random_case(2, 2, 1, 4, 1, seed=8, dtype=torch.float32)
    p1, p2, t1, t2, pid1, pid2, tid1, tid2 = args  # all ids 0: every row matched
    base = detcon_loss(*args)
    extra = torch.randn(2, 1, 4).requires_grad_()
    absent = torch.full((2, 1), 9)  # id drawn in no target
    p1x = torch.cat([p1, extra], 1)
    p2x = torch.cat([p2, extra.detach()], 1)
    pid1x, pid2x = torch.cat([pid1, absent], 1), torch.cat([pid2, absent], 1)
    padded = detcon_loss(p1x, p2x, t1, t2, pid1x, pid2x, tid1, tid2)
    assert padded.item() == pytest.approx(base.item() / 2, rel=1e-6)
    (grad,) = torch.autograd.grad(padded, extra)
    assert torch.count_nonzero(grad) == 0


def test_no_positive_anywhere_gives_zero():
    args = list(_random_case(2, 2, 2, 4, 2, seed=9, dtype=torch.float32))
    args[5] = args[4] + 10  # view 2 ids disjoint from view 1 ids
    args[7] = args[6] + 10
    assert detcon_loss(*args).item() == 0.0


def test_bf16_autocast_returns_float32_close_to_fp32():
    args = _random_case(4, 4, 3, 16, 3, seed=12, dtype=torch.float32)
    ref = detcon_loss(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = detcon_loss(*args)
        bf16_inputs = [a.to(torch.bfloat16) for a in args[:4]]
        out_bf16 = detcon_loss(*bf16_inputs, *args[4:])
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    assert out_bf16.item() == pytest.approx(ref.item(), rel=2e-2)


def test_normalisation_epsilon_on_squared_norm():
    # A vector with norm 1e-7 is scaled by 1e6 (not to unit length), as in the official code.
    tiny = torch.tensor([[[1e-7, 0.0]]], dtype=torch.float64)
    t = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    ids = torch.zeros(1, 1, dtype=torch.long)
    tids = torch.zeros(2, 1, dtype=torch.long)
    loss = detcon_loss(tiny, tiny, t, t, ids, ids, tids, tids, temperature=1.0)
    # Positive logit 0.1, two negatives at 0 (image 1, both views), own target excluded.
    expected = 2 * (math.log(math.exp(0.1) + 2) - 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_module_wrapper_and_validation():
    args = _random_case(2, 2, 2, 4, 2, seed=1, dtype=torch.float32)
    module = DetConLoss(temperature=0.2, local_negatives=False)
    assert "0.2" in repr(module)
    assert module(*args).item() == detcon_loss(*args, temperature=0.2, local_negatives=False).item()
    with pytest.raises(ValueError, match="temperature"):
        DetConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="batch_offset"):
        detcon_loss(*args, batch_offset=1)
    with pytest.raises(ValueError, match="pred_a/pred_b"):
        detcon_loss(args[0], args[1][:, :1], *args[2:])
    with pytest.raises(ValueError, match="embedding"):
        detcon_loss(*args[:2], args[2][..., :2], args[3][..., :2], *args[4:])
    with pytest.raises(TypeError, match="integer"):
        detcon_loss(*args[:4], args[4].float(), *args[5:])
    with pytest.raises(ValueError, match="pred_ids_b"):
        detcon_loss(*args[:5], args[5][:, :1], *args[6:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    args = _random_case(3, 5, 4, 8, 3, seed=21, dtype=torch.float32)
    ref = detcon_loss(*args, batch_offset=2)
    out = detcon_loss(*(a.cuda() for a in args), batch_offset=2)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref)


def _pooled_case(B, N, K, Kt, D, num_ids, seed, dtype=torch.float64):
    """Rows that share (image, id) are equal vectors, as mask-pooled rows are: one vector per
    (image, id), gathered by the drawn ids."""
    g = torch.Generator().manual_seed(seed)
    bank = [torch.randn(n, num_ids, D, generator=g, dtype=dtype) for n in (B, B, N, N)]
    pid1, pid2 = (torch.randint(0, num_ids, (B, K), generator=g) for _ in range(2))
    tid1, tid2 = (torch.randint(0, num_ids, (N, Kt), generator=g) for _ in range(2))
    take = lambda v, ids: v.gather(1, ids[..., None].expand(-1, -1, D))  # noqa: E731
    vecs = [b.requires_grad_() for b in bank]
    inputs = [take(vecs[0], pid1), take(vecs[1], pid2), take(vecs[2], tid1), take(vecs[3], tid2)]
    return vecs, inputs, (pid1, pid2, tid1, tid2)


@pytest.mark.parametrize("local_negatives", [True, False])
@pytest.mark.parametrize(
    "B,N,K,Kt,offset,num_ids",
    [
        (2, 2, 3, 3, 0, 3),
        (2, 5, 4, 4, 2, 3),
        (3, 3, 6, 6, 0, 2),
        (1, 3, 2, 3, 2, 5),
        (4, 4, 16, 16, 0, 4),
    ],
)
def test_distinct_equals_official_on_pooled_rows(B, N, K, Kt, offset, num_ids, local_negatives):
    vecs, inputs, ids = _pooled_case(B, N, K, Kt, 5, num_ids, seed=7 * B + N + K + offset)
    kw = dict(temperature=0.2, local_negatives=local_negatives, batch_offset=offset)
    fast = detcon_loss(*inputs, *ids, distinct=True, **kw)
    official = detcon_loss(*inputs, *ids, **kw)
    assert official.item() > 0
    torch.testing.assert_close(fast, official, rtol=1e-10, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(fast, inputs, retain_graph=True),
        torch.autograd.grad(official, inputs, retain_graph=True),
        strict=True,
    ):  # per-row gradients too: each duplicate gets its equal share
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if N <= 3 and K <= 4:  # and the slow reference from the definition
        slow = reference_loss(*inputs, *ids, 0.2, local_negatives, offset)
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_distinct_self_targets_and_hand_case():
    # DetCon-S: targets are the predictions themselves (gradient through both roles)
    vecs, inputs, (pid1, pid2, _, _) = _pooled_case(3, 3, 4, 4, 4, 3, seed=9)
    p1, p2 = inputs[:2]
    fast = detcon_loss(p1, p2, p1, p2, pid1, pid2, pid1, pid2, temperature=0.3, distinct=True)
    ref = detcon_loss(p1, p2, p1, p2, pid1, pid2, pid1, pid2, temperature=0.3)
    torch.testing.assert_close(fast, ref)
    ga = torch.autograd.grad(fast, vecs[:2], retain_graph=True)
    gb = torch.autograd.grad(ref, vecs[:2])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b)
    # the duplicates hand case above: L = (log(1 + e^2) + log 3) / 2
    p1 = torch.tensor([[[3.0, 0.0], [3.0, 0.0]]])
    p2 = torch.tensor([[[0.0, 2.0], [2.0, 0.0]]])
    id1, id2 = torch.tensor([[0, 0]]), torch.tensor([[0, 1]])
    loss = detcon_loss(p1, p2, p1, p2, id1, id2, id1, id2, temperature=0.5, distinct=True)
    assert loss.item() == pytest.approx((math.log(1 + math.e**2) + math.log(3)) / 2, rel=1e-6)


def test_distinct_large_ids_and_no_positive():
    # ids far beyond uint8 / uint16, and rows whose id the other view never drew
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    a = torch.tensor([[70000, 70000, 5], [9, 9, 9]])
    b = torch.tensor([[1, 2, 3], [4, 5, 6]])  # no id in common: no positive anywhere
    for distinct in (False, True):
        loss = detcon_loss(x, x, x, x, a, b, a, b, distinct=distinct)
        assert loss.item() == 0.0
