"""Weighted k-nearest-neighbour classification on frozen features.

Cosine similarity between L2-normalised features; each of the ``k`` nearest training points
votes for its class with weight ``exp(sim / T)`` (the temperature-weighted vote of Wu et al.
2018, used by most self-supervised papers with ``k=20, T=0.07``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detcon.evaluation.config import KnnEvalConfig
from detcon.evaluation.metrics import topk_accuracy


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of each test point from its ``k`` most similar training points.

    Shapes: ``train_features`` [N, C], ``train_labels`` [N] long in [0, num_classes),
    ``test_features`` [M, C]. Returns Float[M, num_classes]: for class c, the sum over the
    neighbours of class c of ``exp(cos_sim / temperature)``. ``k`` is clipped to N.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, T={temperature}")
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels have different lengths")
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)  # [N, C]
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1)  # [m, C]
        sim = test @ train.T  # [m, N]
        top_sim, top_idx = sim.topk(k, dim=1)  # [m, k]
        weights = (top_sim / temperature).exp()  # [m, k]
        votes = torch.zeros(test.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels.to(top_idx.device)[top_idx], weights)  # [m, classes]
        scores.append(votes)
    return torch.cat(scores)


def run_knn(cfg: KnnEvalConfig) -> dict:
    """``detcon eval knn``: extract features on ImageFolder train/ and val/, classify val."""
    from detcon.distributed import pick_device
    from detcon.evaluation.common import backbone_from_config, check_config
    from detcon.evaluation.features import image_folder_features

    check_config(cfg, KnnEvalConfig)
    device = pick_device(cfg.device)
    backbone, source = backbone_from_config(cfg)
    feats = image_folder_features(
        backbone,
        cfg.data,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        device=device,
    )
    scores = knn_classify(
        feats["train"][0],
        feats["train"][1],
        feats["val"][0],
        feats["num_classes"],
        k=cfg.k,
        temperature=cfg.temperature,
    )
    metrics = topk_accuracy(scores, feats["val"][1].to(scores.device))
    config = {
        "k": cfg.k,
        "temperature": cfg.temperature,
        "image_size": cfg.image_size,
        "num_train": len(feats["train"][1]),
        "num_val": len(feats["val"][1]),
    }
    return {"protocol": "knn", "backbone": source, "config": config, "metrics": metrics}
