"""Metrics against hand-computed answers."""

import math

import pytest
import torch

from detcon.evaluation.knn import knn_classify
from detcon.evaluation.metrics import confusion_matrix, iou_from_confusion, topk_accuracy


def test_confusion_2x2_by_hand_with_ignore():
    target = torch.tensor([[0, 0, 1], [1, 255, 1]])
    pred = torch.tensor([[0, 1, 1], [0, 0, 1]])  # the 255 pixel's prediction must not count
    cm = confusion_matrix(pred, target, num_classes=2)
    # gt0: pred0 once, pred1 once; gt1: pred0 once, pred1 twice
    assert cm.tolist() == [[1, 1], [1, 2]]
    iou, miou = iou_from_confusion(cm)
    # class 0: tp 1 / (1 + fp 1 + fn 1) = 1/3; class 1: tp 2 / (2 + 1 + 1) = 1/2
    assert iou.tolist() == pytest.approx([1 / 3, 1 / 2])
    assert miou == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_absent_class_is_nan_and_left_out_of_mean():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), num_classes=3)
    iou, miou = iou_from_confusion(cm)
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2].item())
    assert miou == 1.0


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), num_classes=3)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), num_classes=3)


def test_topk_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(1 / 3)
    assert acc["top2"] == pytest.approx(2 / 3)  # row 1: 2 is second; row 2: 0 is third
    assert "top5" not in acc  # 5 >= 3 classes: always 1.0, so not reported
    assert set(topk_accuracy(scores, labels, ks=(1, 3))) == {"top1"}


def test_knn_hand_made_case():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.2], [0.0, 3.0]])  # scale must not matter (cosine)
    scores = knn_classify(train, labels, test, num_classes=3, k=3, temperature=0.5)
    assert scores.argmax(1).tolist() == [0, 1]
    # slow reference from the definition for the first test point
    t = test[0] / test[0].norm()
    sims = torch.stack([t @ (x / x.norm()) for x in train])
    top = sims.topk(3).indices
    ref = torch.zeros(3)
    for i in top:
        ref[labels[i]] += torch.exp(sims[i] / 0.5)
    assert torch.allclose(scores[0], ref, atol=1e-6)
    # k=1 is nearest-neighbour: one non-zero class per row
    s1 = knn_classify(train, labels, test, num_classes=3, k=1)
    assert (s1 > 0).sum(1).tolist() == [1, 1]
