"""Frozen-feature and fine-tuning probes of the efficiency benchmark, on held-out scenes.

Inputs are scene arrays (``scenes.generate_arrays``): ``images`` uint8 ``[N,S,S,3]``, ``inst``
``[N,S,S]`` (0 background, i = instance i), ``classes`` / ``stamps`` ``[N, M]`` (class and
identity of instance i+1). A *bank* split (labelled scenes with the training stamps and
backgrounds) and a *val* split (held-out stamps on held-out backgrounds) are used as follows:

* ``reid``: object re-identification. Every val object's feature is the backbone feature map
  pooled with its ground-truth mask (area weights of each feature cell); its nearest neighbour
  (cosine) among the val objects of *other* scenes must be the same stamp file. Top-1 accuracy
  over the objects whose stamp occurs in another scene.
* ``knn``: class of the held-out objects by weighted kNN (k = 20, T = 0.07,
  ``detcon.evaluation.knn``) over the bank objects (other stamp files of the same classes).
* ``fg_iou``: a linear 1x1 probe (standardised frozen features, ``seg_probe.train_head``)
  trained on the bank scenes to separate objects from background; IoU of the object class on
  val.
* ``miou``: the same linear probe over the 10 classes (background + 9); val mIoU.
* ``ft_miou`` / ``ft_fg_iou``: fine-tuning: the whole backbone plus a BatchNorm + 1x1 head
  trained for a few epochs on the bank scenes (SGD, flips), then val mIoU and object IoU.

Object features are standardised per channel with the bank objects' mean / std before the
cosine similarities, so the scale of a random backbone's features does not decide the result.
Objects smaller than ``min_area`` of the scene are left out (too small for the feature grid).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from view_augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, S, S, 3]`` -> float ``[n, 3, S, S]`` with ImageNet mean / std."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract(backbone, images: torch.Tensor, batch: int, device, autocast=None) -> torch.Tensor:
    """Frozen features ``[N, C, h, w]`` (float32, on ``device``) of uint8 scenes, eval mode."""
    was = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise_images(images[i : i + batch].to(device))
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            out.append(backbone(x).float())
    backbone.train(was)
    return torch.cat(out)


def object_weights(inst: torch.Tensor, grid: tuple[int, int], max_objects: int) -> torch.Tensor:
    """Area fraction of each instance 1..M in each feature cell: ``[N, M, h, w]`` (sums of
    one instance's weights over the cells = its pixel count / cell area)."""
    onehot = F.one_hot(inst.long(), max_objects + 1)[..., 1:]  # [N, S, S, M]
    onehot = onehot.permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid)


def object_features(
    feats: torch.Tensor, inst: torch.Tensor, labels: np.ndarray, min_area: float = 0.01
):
    """Mask-pooled object features of the instances covering at least ``min_area``.

    feats ``[N, C, h, w]``, inst ``[N, S, S]``, labels ``[N, M]`` (any per-instance label, -1 or
    0 where there is no instance). Returns ``(vectors [K, C], scene index [K], instance [K])``.
    """
    n, m = labels.shape
    w = object_weights(inst.to(feats.device), tuple(feats.shape[-2:]), m)  # [N, M, h, w]
    area = inst.reshape(n, -1).long()
    frac = torch.stack([(area == i + 1).float().mean(1) for i in range(m)], 1)  # [N, M]
    keep = (frac >= min_area).cpu()
    mass = w.sum((2, 3))  # [N, M]
    vec = torch.einsum("nmhw,nchw->nmc", w, feats) / mass.clamp(min=1e-6)[..., None]
    scene, obj = keep.nonzero(as_tuple=True)
    return vec[scene, obj].float(), scene, obj


def standardise(bank: torch.Tensor, *others: torch.Tensor):
    """Per-channel standardisation with the bank's statistics, then L2 normalisation."""
    mean, std = bank.mean(0, keepdim=True), bank.std(0, keepdim=True).clamp(min=1e-6)
    return [F.normalize((x - mean) / std, dim=1) for x in (bank, *others)]


def reid_accuracy(vec: torch.Tensor, ident: torch.Tensor, scene: torch.Tensor) -> tuple[float, int]:
    """Top-1 re-identification: each object's nearest neighbour (cosine; ``vec`` L2-normalised)
    among the objects of other scenes has its identity. Returns (accuracy, number of queries);
    queries whose identity occurs in no other scene are skipped."""
    sim = vec @ vec.T
    same_scene = scene[:, None] == scene[None, :]
    sim = sim.masked_fill(same_scene.to(sim.device), float("-inf"))
    same_id = (ident[:, None] == ident[None, :]) & ~same_scene
    has = same_id.any(1)
    if not has.any():
        return float("nan"), 0
    nn = sim.argmax(1).cpu()
    hit = ident[nn] == ident
    return float(hit[has].float().mean()), int(has.sum())


def knn_accuracy(bank_vec, bank_cls, q_vec, q_cls, num_classes: int, k: int = 20) -> float:
    from detcon.evaluation.knn import knn_classify

    scores = knn_classify(bank_vec, bank_cls, q_vec, num_classes, k=k, temperature=0.07)
    return float((scores.argmax(1).cpu() == q_cls).float().mean())


def class_maps(inst: torch.Tensor, classes: np.ndarray) -> torch.Tensor:
    """Class label maps ``[N, S, S]`` long (0 background) from instances and their classes."""
    table = torch.cat(
        [
            torch.zeros(len(classes), 1, dtype=torch.long),
            torch.as_tensor(classes, dtype=torch.long),
        ],
        1,
    )
    return torch.gather(table, 1, inst.long().reshape(len(inst), -1)).reshape(inst.shape)


def _confusion(logits_fn, x, y, num_classes: int, chunk: int = 64) -> torch.Tensor:
    from detcon.evaluation.metrics import confusion_matrix

    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            target = y[i : i + chunk]
            logits = logits_fn(x[i : i + chunk])
            logits = F.interpolate(
                logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False
            )
            cm += confusion_matrix(logits.argmax(1).cpu(), target.cpu(), num_classes)
    return cm


def linear_probe(
    x_tr, y_tr, x_va, y_va, num_classes: int, *, epochs: int, batch: int, lr: float, seed: int
) -> torch.Tensor:
    """Confusion matrix on val of a 1x1 linear head on standardised frozen features."""
    from seg_probe import train_head

    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    head, _ = train_head(
        x_tr,
        y_tr.to(x_tr.device),
        num_classes,
        epochs=epochs,
        batch=batch,
        lr=lr,
        wd=1e-4,
        seed=seed,
    )
    return _confusion(head, x_va, y_va.to(x_va.device), num_classes)


def fg_iou(cm: torch.Tensor) -> float:
    """IoU of every non-background class taken together (class 0 = background)."""
    tp, fp, fn = cm[1:, 1:].sum(), cm[0, 1:].sum(), cm[1:, 0].sum()
    union = (tp + fp + fn).item()
    return float("nan") if union == 0 else tp.item() / union


def miou(cm: torch.Tensor) -> float:
    from detcon.evaluation.metrics import iou_from_confusion

    return float(iou_from_confusion(cm)[1])


def finetune(
    backbone,
    bank: dict,
    val: dict,
    num_classes: int,
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    device,
    autocast=None,
) -> torch.Tensor:
    """Confusion matrix on val after fine-tuning a copy of ``backbone`` + a 1x1 head on the bank
    scenes (SGD momentum 0.9, weight decay 1e-4, cosine lr, random horizontal flips, BN in
    training mode; a BatchNorm before the 1x1 classifier; loss at the label resolution)."""
    g = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(backbone).to(device).train()
    for p in net.parameters():
        p.requires_grad_(True)
    torch.manual_seed(seed)
    # BN before the 1x1 classifier: the head's step means the same for every backbone's scale
    head = torch.nn.Sequential(
        torch.nn.BatchNorm2d(net.out_channels), torch.nn.Conv2d(net.out_channels, num_classes, 1)
    ).to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    y_tr = class_maps(bank["inst"], bank["classes"])
    n = len(y_tr)
    per_epoch = max(1, n // batch)
    total = epochs * per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = normalise_images(bank["images"][idx].to(device))
            y = y_tr[idx].to(device)
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            with autocast() if autocast else torch.autocast(device.type, enabled=False):
                logits = head(net(x))
            logits = F.interpolate(
                logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    net.eval()
    head.eval()
    y_va = class_maps(val["inst"], val["classes"])

    def logits_fn(images):
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            return head(net(normalise_images(images.to(device))))

    return _confusion(logits_fn, val["images"], y_va, num_classes)


def evaluate(
    backbone,
    bank: dict,
    val: dict,
    *,
    num_classes: int,
    device,
    linear: tuple,
    fine: tuple | None,
    seed: int,
    batch: int = 64,
    min_area: float = 0.01,
    knn_k: int = 20,
    autocast=None,
) -> dict:
    """All probes of one frozen backbone. ``linear = (epochs, batch, lr)``; ``fine = (epochs,
    batch, lr)`` or None to skip fine-tuning. Returns ``{metric: value}`` plus object counts."""
    f_bank = extract(backbone, bank["images"], batch, device, autocast)
    f_val = extract(backbone, val["images"], batch, device, autocast)
    bv, bs, bo = object_features(f_bank, bank["inst"], bank["classes"], min_area)
    vv, vs, vo = object_features(f_val, val["inst"], val["classes"], min_area)
    bv, vv = standardise(bv, vv)
    v_ident = torch.as_tensor(val["stamps"][vs.numpy(), vo.numpy()], dtype=torch.long)
    v_cls = torch.as_tensor(val["classes"][vs.numpy(), vo.numpy()], dtype=torch.long)
    b_cls = torch.as_tensor(bank["classes"][bs.numpy(), bo.numpy()], dtype=torch.long)
    reid, n_q = reid_accuracy(vv, v_ident, vs)
    out = {
        "reid": reid,
        "knn": knn_accuracy(bv, b_cls, vv, v_cls, num_classes, knn_k),
        "reid_queries": n_q,
        "val_objects": len(vv),
        "bank_objects": len(bv),
    }
    epochs, lbatch, lr = linear
    y_bank = class_maps(bank["inst"], bank["classes"])
    y_val = class_maps(val["inst"], val["classes"])
    cm = linear_probe(
        f_bank, y_bank, f_val, y_val, num_classes, epochs=epochs, batch=lbatch, lr=lr, seed=seed
    )
    out["miou"] = miou(cm)
    cm2 = linear_probe(
        f_bank,
        (y_bank > 0).long(),
        f_val,
        (y_val > 0).long(),
        2,
        epochs=epochs,
        batch=lbatch,
        lr=lr,
        seed=seed,
    )
    out["fg_iou"] = fg_iou(cm2)
    if fine is not None:
        e, b, flr = fine
        cm = finetune(
            backbone,
            bank,
            val,
            num_classes,
            epochs=e,
            batch=b,
            lr=flr,
            seed=seed,
            device=device,
            autocast=autocast,
        )
        out["ft_miou"], out["ft_fg_iou"] = miou(cm), fg_iou(cm)
    return out
