"""Semi-synthetic multi-object scenes from real photographs, with exact instance masks.

Each scene pastes 2-5 photographic object cut-outs (Debian ``tuxpaint-stamps-default``: RGBA
stamps whose alpha channel is the object mask and whose top-level folder is the class) onto
a random crop of a real photograph (Debian ``opencv-doc`` example photos, the nature set of
``mate-backgrounds``, scikit-image's bundled photos). Later pastes occlude earlier ones. The
pixels are real; the layouts are made up, hence "semi-synthetic".

Photographic stamps are kept by a documented filter (:func:`is_photographic`): RGBA, not in a
``cartoon`` folder, not a ``_mirror`` duplicate (we flip ourselves), and textured: fewer than
35% of horizontally adjacent object pixel pairs may be flat (mean |difference| < 2 grey levels),
which removes flat-shaded clip art. Classes are the top-level folders in :data:`CLASSES`
(``military`` merged into ``vehicles``; ``seasonal``, ``symbols``, ``people`` dropped as mixed or
too small). Stamp files are split per class between train and val, so val objects are unseen.

Outputs under ``--out`` (scene ids ``train_000000``, ``val_000000``, ...)::

    voc/JPEGImages/<id>.jpg                 RGB scenes, S x S
    voc/SegmentationClass/<id>.png          palette PNG, class ids (0 background, 255 ignore)
    voc/SegmentationObject/<id>.png         palette PNG, instance ids (0 background)
    voc/ImageSets/Segmentation/{train,val}.txt
    coco/annotations/instances_{train,val}.json   COCO instances (RLE masks, xywh boxes)
    unlabelled/images/<id>.jpg              the train scenes, for pretraining
    unlabelled/gt_masks/<id>.npy            int32 [S, S] region map, ids 0..n-1 (0 background)
    meta.json                               classes, stamp split, sources, parameters

CLI: ``python benchmarks/scenes.py --out benchmarks/.cache/scenes --train N --val M --size S --seed 0``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache"
PACKAGES = ("tuxpaint-stamps-default", "opencv-doc", "mate-backgrounds")
STAMP_DIR = "usr/share/tuxpaint/stamps"
OPENCV_DIR = "usr/share/doc/opencv-doc/examples/data"
WALLPAPER_DIR = "usr/share/backgrounds/mate/nature"
# Real photographs among opencv-doc's example data (drawings, renders, paintings, charts,
# calibration boards and text pages are left out; checked by eye on a contact sheet).
OPENCV_PHOTOS = (
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "board.jpg",
    "box_in_scene.png",
    "building.jpg",
    "butterfly.jpg",
    "fruits.jpg",
    "home.jpg",
    "orange.jpg",
    "messi5.jpg",
    "squirrel_cls.jpg",
    "stuff.jpg",
    "graf1.png",
    "leuvenA.jpg",
    "aero1.jpg",
    "rubberwhale1.png",
    "aloeL.jpg",
    "left.jpg",
    "ela_original.jpg",
    "licenseplate_motion.jpg",
)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
# Class list (index + 1 = class id in the label PNGs; 0 is background).
CLASSES = (
    "animals",
    "food",
    "plants",
    "household",
    "hobbies",
    "space",
    "vehicles",
    "sports",
    "town",
)
MERGE = {"military": "vehicles"}
FLAT_LIMIT = 0.35  # max fraction of flat adjacent pixel pairs for a "photographic" stamp
MIN_STAMP_SIDE = 32  # px; smaller stamps are icons
BG_MAX_SIDE = 640  # backgrounds are downscaled once to this longest side


# --------------------------------------------------------------------------- fetching
def fetch_packages(cache: Path = DEFAULT_CACHE, packages=PACKAGES) -> Path:
    """Download and unpack the Debian packages into ``cache/root`` (no root database needed).

    Returns the unpack root. Each package is fetched once (a ``.done`` marker records it).
    Raises ``RuntimeError`` with the failing command and its output when apt cannot fetch.
    """
    root, debs = cache / "root", cache / "debs"
    root.mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        marker = cache / f".{pkg}.done"
        if marker.exists():
            continue
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError(f"need apt-get and dpkg-deb to fetch {pkg} (Debian/Ubuntu only)")
        found = list(debs.glob(f"{pkg}_*.deb"))
        if not found:
            res = _run(["apt-get", "download", pkg], cwd=debs)
            if res.returncode != 0:  # stale or missing package lists: refresh once, retry
                print(f"apt-get download {pkg} failed; running apt-get update", file=sys.stderr)
                _run(["apt-get", "update"], cwd=debs)
                res = _run(["apt-get", "download", pkg], cwd=debs)
            found = list(debs.glob(f"{pkg}_*.deb"))
            if res.returncode != 0 or not found:
                raise RuntimeError(
                    f"could not download Debian package {pkg!r} (apt-get download {pkg}, in {debs}):\n"
                    f"{res.stdout[-2000:]}\nFetch it by hand into {debs} and rerun."
                )
        res = _run(["dpkg-deb", "-x", str(found[0]), str(root)])
        if res.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {found[0]} failed:\n{res.stdout[-2000:]}")
        marker.touch()
    return root


def _run(cmd, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Stamp:
    """One object cut-out: premultiplied-safe RGBA pixels, its class id and source file."""

    name: str  # path relative to the stamps folder
    class_id: int  # 1..len(CLASSES)
    rgba: np.ndarray  # uint8 [h, w, 4], cropped to the alpha bounding box


def is_photographic(rgba: np.ndarray) -> bool:
    """True if an RGBA stamp ``uint8 [h, w, 4]`` looks like a photo rather than clip art.

    Clip art is flat-shaded: many adjacent opaque pixels have (almost) equal colour.
    """
    opaque = rgba[..., 3] > 128
    if min(rgba.shape[:2]) < MIN_STAMP_SIDE or opaque.sum() < MIN_STAMP_SIDE**2:
        return False
    rgb = rgba[..., :3].astype(np.int16)
    diff = np.abs(rgb[:, 1:] - rgb[:, :-1]).mean(-1)  # [h, w-1]
    both = opaque[:, 1:] & opaque[:, :-1]
    return bool((diff[both] < 2).mean() < FLAT_LIMIT)


def stamp_class(rel: str) -> int | None:
    """Class id of a stamp path relative to the stamps folder, or None if not used."""
    parts = rel.split("/")
    top = MERGE.get(parts[0], parts[0])
    if top not in CLASSES or "cartoon" in parts or rel.endswith("_mirror.png"):
        return None
    return CLASSES.index(top) + 1


def load_stamps(root: Path) -> list[Stamp]:
    """All photographic stamps of the used classes, sorted by name (deterministic)."""
    base = root / STAMP_DIR
    if not base.is_dir():
        raise FileNotFoundError(f"{base} missing: tuxpaint-stamps-default not unpacked")
    stamps = []
    for path in sorted(base.rglob("*.png")):
        rel = path.relative_to(base).as_posix()
        cid = stamp_class(rel)
        if cid is None:
            continue
        with Image.open(path) as im:
            if im.mode != "RGBA":  # palette / grey-alpha stamps are symbols and line art
                continue
            rgba = np.asarray(im.convert("RGBA"))
        ys, xs = np.nonzero(rgba[..., 3] > 0)
        if len(ys) == 0:
            continue
        rgba = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        if is_photographic(rgba):
            stamps.append(Stamp(rel, cid, np.ascontiguousarray(rgba)))
    return stamps


def split_stamps(stamps: list[Stamp], seed: int, val_fraction: float = 0.25):
    """Hold out stamp files per class: ``(train, val)``; every class gets >= 1 of each."""
    rng = np.random.default_rng([seed, 7])
    train, val = [], []
    for cid in range(1, len(CLASSES) + 1):
        group = [s for s in stamps if s.class_id == cid]
        if len(group) < 2:
            raise ValueError(
                f"class {CLASSES[cid - 1]!r} has {len(group)} photographic stamps; need 2"
            )
        order = rng.permutation(len(group))
        n_val = max(1, round(val_fraction * len(group)))
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def load_backgrounds(root: Path) -> list[tuple[str, np.ndarray]]:
    """Background photographs ``(name, uint8 [H, W, 3])``, longest side <= BG_MAX_SIDE."""
    paths = [root / OPENCV_DIR / n for n in OPENCV_PHOTOS] + sorted(
        (root / WALLPAPER_DIR).glob("*.jpg")
    )
    out = []
    for p in paths:
        if not p.is_file():
            print(f"warning: background {p} missing, skipped", file=sys.stderr)
            continue
        with Image.open(p) as im:
            out.append((p.name, _shrink(im.convert("RGB"))))
    import skimage.data

    for name in SKIMAGE_PHOTOS:
        try:
            img = getattr(skimage.data, name)()
        except Exception as err:  # optional: some skimage images need a download
            print(f"warning: skimage.data.{name} unavailable ({err}), skipped", file=sys.stderr)
            continue
        img = img[0] if isinstance(img, tuple) else img
        out.append((f"skimage:{name}", _shrink(Image.fromarray(img).convert("RGB"))))
    if not out:
        raise FileNotFoundError("no background photographs found")
    return out


def _shrink(im: Image.Image) -> np.ndarray:
    scale = BG_MAX_SIDE / max(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    return np.asarray(im)


# --------------------------------------------------------------------------- composing
def compose_scene(
    rng: np.random.Generator,
    backgrounds,
    stamps: list[Stamp],
    size: int,
    min_objects: int = 2,
    max_objects: int = 5,
    min_area: float = 0.005,
    names_out: list | None = None,
):
    """One scene: ``(image uint8 [S,S,3], instances int32 [S,S], classes list[int], alpha_edge bool [S,S])``.

    ``instances`` is 0 for background and 1..n for the visible objects in paste order (fully
    hidden objects are dropped and ids compacted). Scenes are redrawn until at least
    ``min_objects`` objects keep ``min_area`` (fraction of the image) after occlusion.
    ``classes[i-1]`` is the class id of instance ``i``. ``alpha_edge`` marks pixels where the
    topmost object's alpha is neither ~0 nor ~1 (candidate ignore band for the labels).
    Objects are chosen class-first (uniform over classes), then uniformly within the class.
    ``names_out``, when given, is extended with the stamp name of every visible instance (the
    object's identity, for re-identification across scenes).
    """
    by_class = {}
    for s in stamps:
        by_class.setdefault(s.class_id, []).append(s)
    class_ids = sorted(by_class)
    for _ in range(100):  # retry until enough objects stay visible
        _, bg = backgrounds[rng.integers(len(backgrounds))]
        side = int(min(bg.shape[:2]) * rng.uniform(0.35, 1.0))
        y0, x0 = rng.integers(bg.shape[0] - side + 1), rng.integers(bg.shape[1] - side + 1)
        crop = Image.fromarray(bg[y0 : y0 + side, x0 : x0 + side]).resize(
            (size, size), Image.BICUBIC
        )
        canvas = np.asarray(crop, dtype=np.float32)
        if rng.random() < 0.5:
            canvas = canvas[:, ::-1]
        inst = np.zeros((size, size), np.int32)
        edge = np.zeros((size, size), bool)
        classes, names = [], []
        for k in range(int(rng.integers(min_objects, max_objects + 1))):
            stamp = by_class[class_ids[rng.integers(len(class_ids))]]
            stamp = stamp[rng.integers(len(stamp))]
            canvas = _paste(rng, canvas, inst, edge, stamp, k + 1, size)
            classes.append(stamp.class_id)
            names.append(stamp.name)
        area = np.bincount(inst.ravel(), minlength=len(classes) + 1)[1:] / inst.size
        keep = [i for i in range(1, len(classes) + 1) if area[i - 1] > 0]  # fully hidden: gone
        if (area >= min_area).sum() >= min_objects:
            remap = np.zeros(len(classes) + 1, np.int32)
            remap[keep] = np.arange(1, len(keep) + 1)
            image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
            if names_out is not None:
                names_out.extend(names[i - 1] for i in keep)
            return image, remap[inst], [classes[i - 1] for i in keep], edge & (remap[inst] > 0)
    raise RuntimeError("could not compose a scene with enough visible objects")


def _paste(rng, canvas, inst, edge, stamp: Stamp, ident: int, size: int):
    """Alpha-composite one randomly scaled/flipped/placed stamp; update ``inst``/``edge`` in place."""
    h, w = stamp.rgba.shape[:2]
    scale = rng.uniform(0.3, 0.65) * size / max(h, w)  # longest side 30-65% of the scene
    nh, nw = max(2, round(h * scale)), max(2, round(w * scale))
    im = Image.fromarray(stamp.rgba).resize((nw, nh), Image.BILINEAR)  # Pillow premultiplies RGBA
    rgba = np.asarray(im, dtype=np.float32)
    if rng.random() < 0.5:
        rgba = rgba[:, ::-1]
    # Top-left so that at least ~3/4 of the object's width and height lie inside the scene.
    y = int(rng.integers(-nh // 4, size - 3 * nh // 4 + 1))
    x = int(rng.integers(-nw // 4, size - 3 * nw // 4 + 1))
    cy0, cx0, cy1, cx1 = max(y, 0), max(x, 0), min(y + nh, size), min(x + nw, size)
    sub = rgba[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
    alpha = sub[..., 3:] / 255.0
    canvas = canvas.copy()
    region = canvas[cy0:cy1, cx0:cx1]
    canvas[cy0:cy1, cx0:cx1] = alpha * sub[..., :3] + (1 - alpha) * region
    a = alpha[..., 0]
    inst[cy0:cy1, cx0:cx1][a >= 0.5] = ident
    band = edge[cy0:cy1, cx0:cx1]
    band[a >= 0.5] = False  # this object now owns these pixels: reset older bands under it
    band[(a > 0.1) & (a < 0.9)] = True
    return canvas


# --------------------------------------------------------------------------- writing
def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (768 ints): class c gets a colour from the bits of c."""
    pal = []
    for c in range(256):
        r = g = b = 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _save_atomic(write, path: Path) -> None:
    """Call ``write(tmp_path)`` on a temporary file that then replaces ``path`` atomically
    (:func:`detcon.fileio.atomic_path`)."""
    from detcon.fileio import atomic_path

    with atomic_path(path) as tmp:
        write(str(tmp))


def _save_png(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    _save_atomic(lambda t: im.save(t, format="PNG"), path)


def coco_annotations(
    image_id: int, inst: np.ndarray, classes: list[int], first_ann: int
) -> list[dict]:
    """COCO instance annotations (compressed RLE, xywh box, area) for one region map."""
    from pycocotools import mask as mask_utils

    anns = []
    for i, cid in enumerate(classes, start=1):
        binary = np.asfortranarray((inst == i).astype(np.uint8))
        rle = mask_utils.encode(binary)
        box = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": first_ann + len(anns),
                "image_id": image_id,
                "category_id": int(cid),
                "segmentation": rle,
                "area": float(binary.sum()),
                "bbox": box,
                "iscrowd": 0,
            }
        )
    return anns


def generate(
    out: Path,
    n_train: int,
    n_val: int,
    size: int,
    seed: int,
    cache: Path = DEFAULT_CACHE,
    ignore_boundary: bool = False,
) -> dict:
    """Write the whole dataset under ``out`` (layout in the module docstring); returns meta."""
    if min(n_train, n_val) < 1 or size < 16:
        raise ValueError("need --train >= 1, --val >= 1 and --size >= 16")
    root = fetch_packages(cache)
    stamps = load_stamps(root)
    train_stamps, val_stamps = split_stamps(stamps, seed)
    backgrounds = load_backgrounds(root)
    voc, coco, unl = out / "voc", out / "coco" / "annotations", out / "unlabelled"
    stats = {}
    for split, n, pool, tag in (("train", n_train, train_stamps, 0), ("val", n_val, val_stamps, 1)):
        ids, images, anns = [], [], []
        for i in tqdm(range(n), desc=f"scenes {split}", unit="img"):
            rng = np.random.default_rng([seed, tag, i])  # scene i does not depend on n
            image, inst, classes, edge = compose_scene(rng, backgrounds, pool, size)
            sid = f"{split}_{i:06d}"
            ids.append(sid)
            lab = np.zeros_like(inst)
            lab[inst > 0] = np.asarray(classes)[inst[inst > 0] - 1]
            if ignore_boundary:
                lab[edge] = 255
            pil = Image.fromarray(image)
            _save_atomic(
                lambda t, p=pil: p.save(t, format="JPEG", quality=95),
                voc / "JPEGImages" / f"{sid}.jpg",
            )
            _save_png(lab, voc / "SegmentationClass" / f"{sid}.png")
            _save_png(inst, voc / "SegmentationObject" / f"{sid}.png")
            if split == "train":
                (unl / "images").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(voc / "JPEGImages" / f"{sid}.jpg", unl / "images" / f"{sid}.jpg")
                _save_atomic(
                    lambda t, m=inst: np.save(open(t, "wb"), m), unl / "gt_masks" / f"{sid}.npy"
                )
            images.append({"id": i + 1, "file_name": f"{sid}.jpg", "height": size, "width": size})
            anns += coco_annotations(i + 1, inst, classes, len(anns) + 1)
        text = "".join(s + "\n" for s in ids)
        _save_atomic(
            lambda t, s=text: Path(t).write_text(s),
            voc / "ImageSets" / "Segmentation" / f"{split}.txt",
        )
        cats = [
            {"id": c + 1, "name": name, "supercategory": "object"} for c, name in enumerate(CLASSES)
        ]
        doc = json.dumps({"images": images, "annotations": anns, "categories": cats})
        _save_atomic(lambda t, s=doc: Path(t).write_text(s), coco / f"instances_{split}.json")
        stats[split] = {"images": n, "objects": len(anns)}
    meta = {
        "classes": ["background", *CLASSES],
        "size": size,
        "seed": seed,
        "ignore_boundary": ignore_boundary,
        "stamps": {"train": [s.name for s in train_stamps], "val": [s.name for s in val_stamps]},
        "backgrounds": [name for name, _ in backgrounds],
        "counts": stats,
        "coco_image_dir": "voc/JPEGImages",
        "sources": list(PACKAGES) + ["scikit-image"],
    }
    _save_atomic(lambda t: Path(t).write_text(json.dumps(meta, indent=1)), out / "meta.json")
    return meta


# --------------------------------------------------------------------------- arrays (v2)
# The efficiency benchmark's scenes: held-out objects AND held-out backgrounds, 3-6 objects,
# generated in memory from a compact source pack (so a machine without network can rebuild
# them exactly from a few MiB of files).
SOURCE_STAMP_SIDE = 160  # stamps in the source pack: longest side at most this (px)
SOURCE_BG_SIDE = 320  # backgrounds in the source pack: longest side at most this (px)
SOURCES_VERSION = 1


def split_backgrounds(n: int, seed: int, val_fraction: float = 0.25) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` of ``n`` background photos: a seeded permutation, the first
    ``round(val_fraction * n)`` (at least 1) held out for val; both sorted."""
    if n < 2:
        raise ValueError(f"need at least 2 background photos to split, got {n}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _shrink_to(arr: np.ndarray, side: int) -> np.ndarray:
    h, w = arr.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(arr)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.BICUBIC))


def build_sources(path: Path, cache: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """Write the compact source pack ``path`` (npz): every photographic stamp (RGBA, longest
    side <= :data:`SOURCE_STAMP_SIDE`), its class and name, every background photo (longest
    side <= :data:`SOURCE_BG_SIDE`), and the stamp and background train/val splits of ``seed``.
    Reuses an existing pack made with the same seed and version."""
    path = Path(path)
    if path.exists():
        with np.load(path) as z:
            if int(z["version"]) == SOURCES_VERSION and int(z["seed"]) == seed:
                return path
    root = fetch_packages(cache)
    stamps = load_stamps(root)
    train_st, val_st = split_stamps(stamps, seed)
    val_names = {s.name for s in val_st}
    bgs = load_backgrounds(root)
    _, bg_val = split_backgrounds(len(bgs), seed)
    st_pix = [_shrink_to(s.rgba, SOURCE_STAMP_SIDE) for s in stamps]
    bg_pix = [_shrink_to(b, SOURCE_BG_SIDE) for _, b in bgs]

    def flat(arrs):
        shapes = np.array([a.shape for a in arrs], np.int32)
        return np.concatenate([a.ravel() for a in arrs]), shapes

    st_flat, st_shapes = flat(st_pix)
    bg_flat, bg_shapes = flat(bg_pix)
    arrays = {
        "version": np.array(SOURCES_VERSION),
        "seed": np.array(seed),
        "stamp_pixels": st_flat,
        "stamp_shapes": st_shapes,
        "stamp_names": np.array([s.name for s in stamps]),
        "stamp_classes": np.array([s.class_id for s in stamps], np.int16),
        "stamp_val": np.array([s.name in val_names for s in stamps]),
        "bg_pixels": bg_flat,
        "bg_shapes": bg_shapes,
        "bg_names": np.array([n for n, _ in bgs]),
        "bg_val": np.isin(np.arange(len(bgs)), bg_val),
    }
    _save_atomic(lambda t: np.savez_compressed(t, **arrays), path)
    return path


def _unflat(pixels: np.ndarray, shapes: np.ndarray) -> list[np.ndarray]:
    out, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(pixels[at : at + n].reshape(shape))
        at += n
    return out


def load_sources(path: Path) -> dict:
    """The source pack as ``{"stamps": {split: [Stamp]}, "backgrounds": {split: [(name, arr)]},
    "stamp_names": [all names, index = object identity], "bg_names": [...]}``."""
    with np.load(path) as z:
        names = [str(n) for n in z["stamp_names"]]
        pix = _unflat(z["stamp_pixels"], z["stamp_shapes"])
        stamps = [
            Stamp(n, int(c), p) for n, c, p in zip(names, z["stamp_classes"], pix, strict=True)
        ]
        val = z["stamp_val"]
        bgs = list(
            zip(
                [str(n) for n in z["bg_names"]],
                _unflat(z["bg_pixels"], z["bg_shapes"]),
                strict=True,
            )
        )
        bg_val = z["bg_val"]
    return {
        "stamps": {
            "train": [s for s, v in zip(stamps, val, strict=True) if not v],
            "val": [s for s, v in zip(stamps, val, strict=True) if v],
        },
        "backgrounds": {
            "train": [b for b, v in zip(bgs, bg_val, strict=True) if not v],
            "val": [b for b, v in zip(bgs, bg_val, strict=True) if v],
        },
        "stamp_names": names,
        "bg_names": [n for n, _ in bgs],
    }


_WORKER_SOURCES: dict = {}


def _scene_chunk(args) -> tuple:
    split, indices, size, seed, min_objects, max_objects = args
    src = _WORKER_SOURCES
    ident = {n: i for i, n in enumerate(src["stamp_names"])}
    cls_of = {s.name: s.class_id for group in src["stamps"].values() for s in group}
    tag = {"train": 100, "val": 101}[split]
    m = len(indices)
    images = np.zeros((m, size, size, 3), np.uint8)
    inst = np.zeros((m, size, size), np.uint8)
    classes = np.zeros((m, max_objects), np.int16)
    stamps = np.full((m, max_objects), -1, np.int16)
    for j, i in enumerate(indices):
        rng = np.random.default_rng([seed, tag, i])  # scene i does not depend on n
        names: list[str] = []
        img, ins, _, _ = compose_scene(
            rng,
            src["backgrounds"][split],
            src["stamps"][split],
            size,
            min_objects,
            max_objects,
            names_out=names,
        )
        images[j], inst[j] = img, ins
        classes[j, : len(names)] = [cls_of[n] for n in names]
        stamps[j, : len(names)] = [ident[n] for n in names]
    return images, inst, classes, stamps


def generate_arrays(
    sources: dict,
    split: str,
    n: int,
    size: int,
    seed: int = 0,
    min_objects: int = 3,
    max_objects: int = 6,
    workers: int = 1,
) -> dict:
    """``n`` scenes of ``split`` (its own stamps and its own background photos) as arrays:
    ``images`` uint8 ``[n,S,S,3]``, ``inst`` uint8 ``[n,S,S]`` (0 background, 1..m objects in
    paste order), ``classes`` int16 ``[n, max_objects]`` (class of instance i+1, 0 = none) and
    ``stamps`` int16 ``[n, max_objects]`` (identity = index into ``stamp_names``, -1 = none).
    Scene ``i`` is a function of ``(seed, split, i)`` only; ``workers`` processes share the work.
    """
    if split not in ("train", "val") or n < 1 or size < 16 or not 1 <= min_objects <= max_objects:
        raise ValueError(
            f"bad scene request: split={split!r} n={n} size={size} "
            f"objects={min_objects}..{max_objects}"
        )
    _WORKER_SOURCES.clear()
    _WORKER_SOURCES.update(sources)
    step = max(1, -(-n // (4 * max(1, workers))))
    jobs = [
        (split, list(range(a, min(n, a + step))), size, seed, min_objects, max_objects)
        for a in range(0, n, step)
    ]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(
                tqdm(pool.imap(_scene_chunk, jobs), total=len(jobs), desc=f"scenes {split}")
            )
    else:
        parts = [_scene_chunk(j) for j in tqdm(jobs, desc=f"scenes {split}")]
    keys = ("images", "inst", "classes", "stamps")
    return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(keys)}


def contact_sheet(out: Path, path: Path, n: int = 8) -> None:
    """Save a PNG: first ``n`` val scenes (top row), their class maps, first ``n`` train scenes."""
    voc = out / "voc"
    rows = []
    for split in ("val", "train"):
        ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
        rows.append([Image.open(voc / "JPEGImages" / f"{i}.jpg").convert("RGB") for i in ids])
        if split == "val":
            rows.append(
                [Image.open(voc / "SegmentationClass" / f"{i}.png").convert("RGB") for i in ids]
            )
    s = rows[0][0].width
    sheet = Image.new("RGB", (n * (s + 2), len(rows) * (s + 2)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im, (c * (s + 2), r * (s + 2)))
    _save_atomic(lambda t: sheet.save(t, format="PNG"), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_CACHE / "scenes")
    p.add_argument("--train", type=int, default=2000, help="number of train (= unlabelled) scenes")
    p.add_argument("--val", type=int, default=500, help="number of val scenes (held-out stamps)")
    p.add_argument("--size", type=int, default=96, help="scene side S in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where Debian packages go")
    p.add_argument("--ignore-boundary", action="store_true", help="label soft object edges 255")
    p.add_argument("--sheet", type=Path, default=None, help="also write a contact-sheet PNG here")
    args = p.parse_args(argv)
    try:
        meta = generate(
            args.out, args.train, args.val, args.size, args.seed, args.cache, args.ignore_boundary
        )
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.sheet:
        contact_sheet(args.out, args.sheet)
    n_st = {k: len(v) for k, v in meta["stamps"].items()}
    print(
        f"wrote {meta['counts']} to {args.out}; stamps {n_st}; {len(meta['backgrounds'])} backgrounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
