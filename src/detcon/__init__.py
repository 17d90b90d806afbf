"""detcon: efficient visual pretraining with contrastive detection (Hénaff et al., ICCV 2021).

The library is organised by concern (see ``docs/architecture.md``):

- :mod:`detcon.masks`: unsupervised and supervised region maps, their cache, and their
  reduction to the backbone's feature grid (majority vote) plus per-view id sampling.
- :mod:`detcon.data`: robust image decoding, datasets yielding two views with their masks,
  paired augmentations.
- :mod:`detcon.model`: backbones, mask pooling, projector/predictor heads, the DetCon network,
  the EMA target update.
- :mod:`detcon.losses`: the DetCon contrastive loss as a pure function.
- :mod:`detcon.optim`: LARS and the learning-rate / EMA schedules as pure functions of the step.
- :mod:`detcon.distributed`: no-op-on-one-process collectives.
- :mod:`detcon.train`, :mod:`detcon.evaluation`, :mod:`detcon.export`: the jobs.
"""

__version__ = "0.1.0"
