"""Import the official (haiku) DetCon / BYOL pretrained weights into our PyTorch modules.

The official release (github.com/deepmind/detcon) ships its ResNet-50 / ResNet-200 weights as
``np.save`` of a Python dict (an object ``.npy``: a pickle after the header); BYOL-style
experiment checkpoints are a pickle of ``{'experiment_state': _ByolExperimentState(...), ...}``
whose namedtuple class lives in a module users do not have. Both are read here **without**
``allow_pickle=True`` and without importing anything: :func:`safe_load_official` uses a
restricted unpickler that only reconstructs numpy arrays, plain containers and inert records
(for the experiment-state namedtuples), and refuses everything else with
:class:`UnsafeCheckpointError` before it can run.

Haiku naming (recorded with real dm-haiku 0.0.17 from the official ``utils/networks.py`` by
``scripts/fixtures/make_official_fixture.py`` into ``tests/fixtures/official_haiku_inventory.json``;
the block / BN / EMA names are the same in the haiku 0.0.2 and 0.0.4 sources):

* torso ``<torso>`` = ``res_net50`` (class ``ResNet50``, no explicit name), ``res_net200``, ...:
  ``<torso>/~/initial_conv`` (``w`` HWIO), ``<torso>/~/initial_batchnorm`` (``scale``,
  ``offset`` ``[1,1,1,C]``), ``<torso>/~/block_group_{g}/~/block_{b}/~/conv_{i}`` /
  ``batchnorm_{i}`` (bottleneck: ``conv_0`` 1x1, ``conv_1`` 3x3 with the stride, ``conv_2``
  1x1; basic: ``conv_0`` 3x3 with the stride, ``conv_1`` 3x3), ``.../shortcut_conv`` and
  ``.../shortcut_batchnorm`` on the first block of a group with projection;
* BN state: ``<bn module>/~/mean_ema`` and ``/~/var_ema``, each ``hidden`` (biased),
  ``average`` (zero-debiased, what haiku's BN uses at eval) and ``counter``;
* heads (``networks.MLP``): ``projector/linear`` (``w`` ``[in, hidden]``, ``b``),
  ``projector/batch_norm`` (``scale``/``offset`` ``[1,1,hidden]`` when fed ``[B, K, D]``),
  ``projector/linear_1`` (``w`` only), same for ``predictor``; ``classifier`` (``w``, ``b``).

Mapping: conv ``w`` HWIO -> ``weight`` OIHW (``transpose(3, 2, 0, 1)``); BN ``scale`` /
``offset`` -> ``weight`` / ``bias``; ``mean_ema/average`` / ``var_ema/average`` ->
``running_mean`` / ``running_var`` (haiku's eval BN ``(x - mean) * rsqrt(var + eps) * scale +
offset`` with eps 1e-5 is torch's eval BN); ``mean_ema/counter`` -> ``num_batches_tracked``;
``hidden`` is not needed, nor a torso ``<torso>/~/logits`` linear (present only when the
torso was built with ``num_classes``; it is accepted and dropped). Linear ``w`` ``[in, out]``
-> ``weight`` ``[out, in]``. A real-haiku ResNet-50 / ResNet-18 checkpoint and eval output
(``make_official_fixture.py --e2e DIR``, too large to commit) match :func:`load_backbone` to
~2e-6 relative (``DETCON_OFFICIAL_E2E=DIR pytest tests/test_official_import.py``).

The official ``ResNet18`` / ``ResNet34`` (basic blocks) use a projection shortcut on the first
block of *every* group, including ``block_group_0`` where torchvision has none; the imported
backbone then gets an extra ``layer1.0.downsample`` (reported as ``layer1_projection``).

API: :func:`safe_load_official`, :func:`inspect_official`, :func:`load_backbone`,
:func:`load_heads`, :func:`convert`, :func:`backbone_from_converted`,
:func:`expected_official_names`.
"""

from __future__ import annotations

from detcon.official.convert import (
    backbone_from_converted,
    convert,
    expected_official_names,
    inspect_official,
    load_backbone,
    load_heads,
    to_checkpoint,
)
from detcon.official.unpickle import (
    OfficialFormatError,
    UnsafeCheckpointError,
    safe_load_official,
)

__all__ = [
    "UnsafeCheckpointError",
    "OfficialFormatError",
    "safe_load_official",
    "inspect_official",
    "expected_official_names",
    "load_backbone",
    "load_heads",
    "convert",
    "backbone_from_converted",
    "to_checkpoint",
]
