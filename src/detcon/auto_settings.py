"""Settings for ``detcon pretrain --data DIR`` without ``--config``, chosen from the device and
the folder, each with the reason it was chosen.

* GPU: ResNet-50 at 224 px (the official model and view size), bf16 autocast (fp16 where the
  GPU lacks bf16), the largest power-of-two batch per GPU that the memory estimate below says
  fits (at most 4096 in all, the official batch), loader workers from the CPU cores per GPU.
* CPU: ResNet-18 at 96 px with small heads, batch 32, float32: a run that shows learning in
  tens of minutes, not a recipe for a good model.
* Epochs from the folder's size: ``1000 * sqrt(10000 / n)`` rounded, within [100, 1000] on a
  GPU (1000 epochs, the official length, up to 10k images; 100 from 1M images on, about
  ImageNet); on a CPU about 50k images are seen in all.
* ``data.class_tree`` when every image lies in a sub-folder of ``DIR`` one level down and
  there are at least two (labels enable the online linear probe).

The memory estimate: the tensors a ResNet-50 saves for backward at 224 px under bf16 autocast
are 85.5 MiB per image (counted on CPU with ``torch.autograd.graph.saved_tensors_hooks``;
ResNet-18: 27.1 MiB; float32 doubles them); DetCon_B runs two views through the online network,
and a factor 1.5 covers the target's forward, the heads, cuDNN workspaces and the allocator. It
is an estimate, not a measurement on each GPU: ``data.batch_size=...`` overrides it.

Every choice is printed before the first step and stored in ``train.auto_settings`` (so in the
run's ``config.yaml``). Explicit flags and ``key=value`` overrides win over every choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AutoSettings", "choose_settings", "epochs_for", "batch_for", "is_class_tree"]

#: Saved-for-backward MiB per image at 224 px under bf16 autocast (see the module docstring).
SAVED_MIB_224_BF16 = {"resnet18": 27.1, "resnet50": 85.5}
_OVERHEAD = 1.5
_MEMORY_FRACTION = 0.8  # of the GPU's memory planned for the step
_CPU_IMAGES_SEEN = 50_000


@dataclass
class AutoSettings:
    """``overrides``: ``key=value`` strings (applied before the user's); ``reasons``: one
    line per choice."""

    overrides: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def set(self, key: str, value, why: str) -> None:
        self.overrides.append(f"{key}={value}")
        self.reasons.append(f"{key}={value}: {why}")

    def summary(self) -> str:
        return "; ".join(self.reasons)


def epochs_for(n_images: int, device: str) -> int:
    """Epochs for a folder of ``n_images`` (module docstring)."""
    if n_images < 1:
        raise ValueError("no images")
    if device == "cpu":
        return max(1, min(1000, round(_CPU_IMAGES_SEEN / n_images)))
    raw = 1000 * math.sqrt(10_000 / n_images)
    return int(min(1000, max(100, round(raw / 10) * 10)))


def batch_for(
    memory_bytes: int,
    backbone: str = "resnet50",
    image_size: int = 224,
    bf16: bool = True,
    world_size: int = 1,
    n_images: int | None = None,
) -> int:
    """Largest power-of-two batch per process whose estimated step memory fits in
    ``_MEMORY_FRACTION`` of ``memory_bytes`` (at least 8; the global batch at most 4096 and at
    most ``n_images``). Returns the GLOBAL batch (per-process batch x ``world_size``)."""
    mib = SAVED_MIB_224_BF16[backbone] * (image_size / 224) ** 2 * (1 if bf16 else 2)
    per_image = 2 * mib * _OVERHEAD * 2**20  # two views through the online network
    fits = max(1, int(memory_bytes * _MEMORY_FRACTION // per_image))
    per_process = max(8, 2 ** int(math.log2(fits)))
    cap = 4096 if n_images is None else min(4096, n_images)
    while per_process > 8 and per_process * world_size > cap:
        per_process //= 2
    return per_process * world_size


def is_class_tree(root: Path, files: list[Path]) -> bool:
    """Every file lies exactly one folder below ``root`` and there are at least two folders."""
    parents = set()
    for f in files:
        rel = f.relative_to(root).parts
        if len(rel) != 2:
            return False
        parents.add(rel[0])
    return len(parents) >= 2


def _user_keys(overrides: list[str]) -> set[str]:
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def _user_device(overrides: list[str]) -> str | None:
    for item in reversed(overrides):
        key, _, value = item.partition("=")
        if key.strip() == "train.device":
            return value.strip()
    return None


def _user_int(overrides: list[str], key: str) -> int | None:
    for item in reversed(overrides):
        k, _, value = item.partition("=")
        if k.strip() == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _value(auto: AutoSettings, key: str) -> str | None:
    for item in auto.overrides:
        k, _, value = item.partition("=")
        if k == key:
            return value
    return None


def choose_settings(data: str, overrides: list[str], files: list[Path] | None = None):
    """Settings for ``data`` (an image folder) on this machine; ``overrides`` are the user's
    (their keys are left alone). ``files`` (the folder's images) saves a scan when known.
    Returns :class:`AutoSettings`."""
    import torch

    from detcon.data.datasets import no_images_error, scan_images

    root = Path(data)
    files = scan_images(root) if files is None else files
    n = len(files)
    if n == 0:
        raise no_images_error(root)
    user = _user_keys(overrides)
    auto = AutoSettings()

    def put(key, value, why):
        if key not in user:
            auto.set(key, value, why)

    wanted = _user_device(overrides) or "auto"
    cuda = wanted != "cpu" and torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    cores = os.cpu_count() or 1
    if cuda:
        index = int(wanted.partition(":")[2] or 0) if wanted.startswith("cuda") else 0
        props = torch.cuda.get_device_properties(index)
        bf16 = torch.cuda.is_bf16_supported()
        gib = props.total_memory / 2**30
        backbone = "resnet50" if "model.backbone" not in user else None
        put("train.device", "cuda", f"{props.name} found")
        put("model.backbone", "resnet50", "the official DetCon model, for a GPU")
        put("data.image_size", 224, "the official view size (a 7x7 feature grid)")
        put(
            "train.precision",
            "bf16" if bf16 else "fp16",
            "autocast on the GPU, about 2x the speed of float32 (a deviation from the official "
            "float32)",
        )
        batch = batch_for(props.total_memory, backbone or "resnet50", 224, True, world, n)
        put(
            "data.batch_size",
            batch,
            f"the largest power of two per GPU that fits {gib:.0f} GiB by the estimate of "
            f"detcon.auto_settings ({batch // world} per GPU x {world} GPU(s))",
        )
        workers = max(1, min(12, cores // max(1, world) - 1))
        put("data.num_workers", workers, f"{cores} CPU cores for {world} GPU process(es)")
        epochs = epochs_for(n, "cuda")
        put("train.epochs", epochs, f"{n} images: 1000 * sqrt(10000 / n) within [100, 1000]")
    else:
        why = "train.device=cpu" if wanted == "cpu" else "no GPU found"
        put("train.device", "cpu", why)
        put("model.backbone", "resnet18", "small settings for a CPU")
        put("data.image_size", 96, "small settings for a CPU (a 3x3 feature grid)")
        put("model.proj_hidden", 512, "small heads for a CPU")
        put("model.pred_hidden", 512, "small heads for a CPU")
        put("model.proj_dim", 128, "small heads for a CPU")
        put("train.precision", "fp32", "bf16 is slow on most CPUs")
        put("train.channels_last", "false", "no gain on CPUs")
        put("data.batch_size", min(32, n), "small settings for a CPU")
        workers = max(0, min(4, cores // 2))
        put("data.num_workers", workers, f"{cores} CPU cores, shared with the training step")
        epochs = epochs_for(n, "cpu")
        put("train.epochs", epochs, f"{n} images: about {_CPU_IMAGES_SEEN} images seen in all")
    put("train.steps", 0, "the run length is train.epochs")
    batch = _user_int(overrides, "data.batch_size") or int(_value(auto, "data.batch_size") or 1)
    if n < batch:
        put(
            "data.repeat",
            math.ceil(batch / n),
            f"{n} images, fewer than one batch of {batch}: each epoch repeats the folder",
        )
    if is_class_tree(root, files):
        folders = len({f.relative_to(root).parts[0] for f in files})
        put("data.class_tree", "true", f"{folders} class folders: labels for the online probe")
    return auto
