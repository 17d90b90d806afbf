"""Bad inputs give one clear line, not a traceback or a silent success: YAML errors, value
ranges, empty or unreadable image folders, odd files in scans, unknown ``--masks``, Ctrl-C in
``detcon masks``, per-item seeds of the evaluation datasets."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.cli import main
from detcon.config import ConfigError, load_config, recipe_names, resolve

# -- item 7: YAML that does not parse ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, line",
    [
        ("train:\n  steps: 10\n  out: [unclosed\n", None),  # syntax error
        ("train:\n  steps: 10\n? [a, b]\n: 1\n", 3),  # unhashable key
        ("train:\n  out: !!python/object/apply:os.system ['true']\n", 2),  # unsafe tag
        ("data:\n\tdata: x\n", 2),  # a tab
    ],
)
def test_unparsable_yaml_is_one_line_config_error(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "invalid YAML" in msg
    if line is not None:
        assert f"{path}:{line}:" in msg


def test_pretrain_cli_bad_yaml_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {steps: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "detcon", "pretrain", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DETCON_DEBUG": ""},
    )
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    errors = [ln for ln in out.splitlines() if str(path) in ln and "invalid YAML" in ln]
    assert len(errors) == 1, out


# -- item 8: value ranges ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "train.ckpt_every=0",
        "train.log_every=0",
        "train.keep_every=-1",
        "train.steps=-3",
        "train.stop_after=-1",
        "optim.ema_base=1.5",
        "optim.ema_base=-0.1",
        "optim.base_lr=0",
        "optim.base_lr=nan",
        "optim.weight_decay=-1e-6",
        "optim.momentum=1",
        "optim.momentum=-0.5",
        "optim.eta=0",
        "loss.temperature=0",
        "data.batch_size=0",
        "data.image_size=16",
        "data.num_workers=-1",
        "data.repeat=0",
        "masks.num_masks=0",
        "train.grad_accum=0",
        "train.device=gpu",
        "train.device=cuda:x",
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("quickstart_cpu", [override])


def test_out_of_range_in_yaml_and_in_resolve(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: {log_every: 0}\n")
    with pytest.raises(ConfigError, match=r"train\.log_every must be >= 1, got 0"):
        load_config(str(path))
    cfg = load_config(None, ["data.batch_size=4", "train.steps=2"])
    cfg.train.log_every = 0
    with pytest.raises(ConfigError, match=r"train\.log_every"):
        resolve(cfg, dataset_size=8)
    cfg.train.log_every, cfg.optim.momentum = 1, 1.0
    with pytest.raises(ConfigError, match=r"optim\.momentum must be in \[0, 1\)"):
        resolve(cfg, dataset_size=8)


def test_epochs_must_be_positive_when_steps_derive_from_them():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(None, ["train.epochs=0"])
    cfg = load_config(None, ["train.epochs=0", "train.steps=5"])  # epochs ignored
    assert cfg.train.steps == 5
    assert load_config(None, ["train.steps=0"]).train.steps == 0  # 0 = derive from epochs


def test_valid_edges_and_devices_are_accepted():
    cfg = load_config(
        None,
        [
            "optim.ema_base=1",
            "optim.ema_base=0",
            "optim.momentum=0",
            "optim.weight_decay=0",
            "train.keep_every=0",
            "train.stop_after=0",
            "data.num_workers=0",
            "data.image_size=32",
            "train.device=cpu",
            "train.device=auto",
        ],
    )
    assert cfg.optim.ema_base == 0 and cfg.train.device == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda_is_a_load_error(device):
    with pytest.raises(ConfigError, match="CUDA is not available.*train.device=cpu or auto"):
        load_config(None, [f"train.device={device}"])


def test_every_shipped_recipe_passes_the_range_checks():
    for name in recipe_names():
        cfg = load_config(name, ["train.device=cpu"])
        resolve(cfg, dataset_size=max(cfg.data.batch_size, 1281167))


# -- items 9 and 10: empty or unreadable folders, odd entries in a scan -----------------------


def _image(path, colour=(200, 30, 30), size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = colour
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_masks_on_a_folder_without_images_is_exit_2_and_leaves_no_cache(tmp_path, capsys, content):
    data = tmp_path / "data"
    data.mkdir()
    if content:
        (data / content).write_text("not an image")
    out = tmp_path / "cache"
    assert main(["masks", str(data), "--out", str(out), "--workers", "1", "--quiet"]) == 2
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(data) in err[0] and ".jpg" in err[0] and ".png" in err[0]
    assert "images:" not in captured.out
    assert not out.exists()


@pytest.mark.slow
def test_pretrain_on_a_folder_without_images_or_only_unreadable_ones_is_exit_2(tmp_path):
    from detcon.data.datasets import ImageFolderDataset, NoImagesError, UnreadableImagesError

    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(NoImagesError, match=r"no images in .*empty.*\.jpg"):
        ImageFolderDataset(empty, masks="grid", image_size=32)
    ds = ImageFolderDataset(broken, masks="grid", image_size=32)
    with pytest.raises(UnreadableImagesError, match=r"broken.*\.jpg") as info, pytest.warns():
        ds[0]
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, RuntimeError)
    assert "\n" not in str(info.value)
    for folder, words in ((empty, "no images in"), (broken, "can be read")):
        proc = subprocess.run(
            [sys.executable, "-m", "detcon", "pretrain", "--data", str(folder), "--steps", "1"]
            + ["--batch-size", "2", "data.num_workers=2", f"train.out={tmp_path / 'run'}"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DETCON_DEBUG": ""},
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if words in ln]
        assert len(lines) == 1 and str(folder) in lines[0] and ".png" in lines[0]


def test_worker_reraised_image_error_stays_one_line():
    from detcon.data.datasets import UnreadableImagesError

    try:
        raise UnreadableImagesError("none of the 1 image files in /x can be read")
    except UnreadableImagesError:
        import traceback

        text = "Caught UnreadableImagesError in DataLoader worker process 0.\nOriginal "
        text += traceback.format_exc()
    assert str(UnreadableImagesError(text)) == "none of the 1 image files in /x can be read"


def test_scan_reports_dangling_symlinks_and_folders_named_like_images(tmp_path):
    from detcon.data.datasets import ImageFolderDataset, scan_images

    data = tmp_path / "data"
    _image(data / "a.png")
    (data / "x.jpg").mkdir()
    os.symlink(tmp_path / "gone.png", data / "b.png")
    skipped = []
    assert scan_images(data, skipped) == [data / "a.png"]
    assert [os.path.basename(p) for p, _ in skipped] == ["b.png", "x.jpg"]
    assert "dangling symlink" in skipped[0][1] and "folder" in skipped[1][1]
    assert scan_images(data) == [data / "a.png"]  # the old call still works
    with pytest.warns(UserWarning, match="skipped 2 entries"):
        ds = ImageFolderDataset(data, masks="grid", image_size=32)
    assert len(ds.skipped) == 2


def test_masks_cli_lists_scan_rejects_and_writes_the_full_skipped_list(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "cache"
    _image(data / "a.png")
    (data / "x.jpg").mkdir()
    os.symlink(tmp_path / "gone.png", data / "b.png")
    for k in range(22):
        (data / f"bad{k:02d}.png").write_bytes(b"garbage")
    args = ["masks", str(data), "--out", str(out), "--workers", "1", "--quiet", "--method", "grid"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "images: 25  computed: 1  reused: 0  skipped: 24" in text
    assert "b.png: dangling symlink" in text and "x.jpg: not a file" in text
    listing = (out / "skipped.txt").read_text().splitlines()
    assert len(listing) == 24 and str(out / "skipped.txt") in text
    assert {ln.split("\t")[0] for ln in listing} >= {str(data / "x.jpg"), str(data / "b.png")}
    assert all("\t" in ln for ln in listing)


# -- item 11: unknown --masks ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cache_nope", "./cache_nope", "/no/such/cache", "fhh:scale=3"])
def test_unknown_masks_names_both_possibilities(tmp_path, spec):
    from detcon.data.builtin import build_pretrain_dataset
    from detcon.data.datasets import resolve_masks

    msg = (
        f"masks '{spec}' is neither a mask cache folder nor a generator (fh, grid, whole, slic, "
        "quickshift, watershed, coco, or a function as module.sub:function)"
    )
    with pytest.raises(FileNotFoundError) as info:
        resolve_masks(spec)
    assert str(info.value) == msg
    data = _image(tmp_path / "data" / "a.png").parent
    with pytest.raises(FileNotFoundError, match="neither a mask cache folder"):
        build_pretrain_dataset(data, spec, image_size=32)


def test_known_mask_specs_still_resolve(tmp_path):
    from detcon.data.datasets import resolve_masks

    assert resolve_masks("grid:rows=2")[1].params == {"rows": 2, "cols": 2}
    assert resolve_masks("fh")[1].name == "fh"
    with pytest.raises(ValueError, match="coco"):
        resolve_masks("coco")


@pytest.mark.slow
def test_pretrain_cli_unknown_masks_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "detcon", "pretrain", "--masks", "cache_nope", "--steps", "1"]
        + [f"train.out={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DETCON_DEBUG": ""},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "masks 'cache_nope' is neither a mask cache folder nor a generator" in proc.stderr


# -- item 12: safetensors is a core dependency -------------------------------------------------


def test_safetensors_is_a_core_dependency():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = [d.split(">")[0].split("=")[0].strip() for d in meta["project"]["dependencies"]]
    assert "safetensors" in deps
    assert any(d.startswith("timm") for d in meta["project"]["optional-dependencies"]["export"])


# -- item 14: Ctrl-C during detcon masks -------------------------------------------------------


def test_ctrl_c_in_masks_prints_the_summary_so_far(tmp_path, capsys, monkeypatch):
    from detcon.commands import masks as masks_cmd
    from detcon.masks.generators import CallableGenerator

    data = tmp_path / "data"
    for k in range(4):
        _image(data / f"{k}.png", colour=(40 * k, 0, 0))
    calls = []

    def interrupted(image):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return (image[..., 0] > 0).astype(np.int32)

    gen = CallableGenerator(interrupted, "thresh", {})
    monkeypatch.setattr(masks_cmd, "build_method", lambda args: gen)
    out = tmp_path / "cache"
    try:
        rc = main(["masks", str(data), "--out", str(out), "--workers", "1", "--quiet"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped detcon masks as a traceback")
    captured = capsys.readouterr()
    assert rc == 130
    assert "interrupted after 2 of 4 images" in captured.out
    assert "computed: 2" in captured.out
    assert [ln for ln in captured.err.splitlines() if ln.strip()] == [
        "interrupted (Ctrl-C); rerun the same command to resume"
    ]


def test_masks_pool_workers_ignore_sigint():
    import signal

    from detcon.commands import masks as masks_cmd

    before = signal.getsignal(signal.SIGINT)
    try:
        masks_cmd._init_pool_worker(None, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
        masks_cmd._STATE.clear()


# -- item 16: per-item augmentation seeds of the evaluation datasets ---------------------------


def _voc(root, n=4, size=48):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    arr = (np.arange(size * size * 3).reshape(size, size, 3) % 251).astype(np.uint8)
    mask = (np.arange(size * size).reshape(size, size) % 3).astype(np.uint8)
    ids = [f"im{i}" for i in range(n)]
    for image_id in ids:  # identical items: any difference comes from the augmentation
        Image.fromarray(arr).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def _epochs(dataset, epochs=2, workers=2):
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=lambda b: b[0])
    return [[item for item in loader] for _ in range(epochs)]


def test_voc_augmentations_differ_between_items_and_epochs_with_workers(tmp_path):
    from detcon.evaluation.voc import TrainTransform, VOCSegmentation

    ds = VOCSegmentation(_voc(tmp_path / "voc"), "train", TrainTransform(32, seed=1))
    first, second = _epochs(ds)
    masks = [[m for _, m in epoch] for epoch in (first, second)]
    assert not torch.equal(masks[0][0], masks[0][1])  # items 0 and 1: workers 0 and 1
    assert not torch.equal(masks[0][2], masks[0][3])
    assert not all(torch.equal(a, b) for a, b in zip(masks[0], masks[1], strict=True))
    again = _epochs(ds)  # the same seeds reproduce the same run
    assert all(
        torch.equal(a[1], b[1])
        for e, f in zip((first, second), again, strict=True)
        for a, b in zip(e, f, strict=True)
    )


def test_coco_flips_differ_between_items_and_epochs_with_workers(tmp_path):
    pytest.importorskip("pycocotools")
    import json

    from detcon.evaluation.coco import CocoInstances

    images = tmp_path / "images"
    images.mkdir()
    arr = np.zeros((24, 32, 3), np.uint8)
    arr[:, :8] = 255
    entries, anns = [], []
    for i in range(16):
        Image.fromarray(arr).save(images / f"{i}.png")
        entries.append({"id": i + 1, "file_name": f"{i}.png", "height": 24, "width": 32})
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [0, 0, 8, 24],
                "area": 192,
                "segmentation": [[0, 0, 8, 0, 8, 24, 0, 24]],
            }
        )
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps({"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "a"}]})
    )
    ds = CocoInstances(images, ann, train=True, seed=3)
    epochs = _epochs(ds)
    flips = [[bool(t["boxes"][0, 0] > 0) for _, t in epoch] for epoch in epochs]
    assert flips[0][0::2] != flips[0][1::2]  # not drawn in pairs by the 2 workers
    assert flips[0] != flips[1]  # the next epoch draws anew


# -- item 17: KEY=VALUE overrides mixed with flags ---------------------------------------------


def test_overrides_may_come_before_and_between_flags():
    from detcon.cli import build_parser

    args = build_parser().parse_args(["pretrain", "optim.base_lr=0.3", "--steps", "1", "x=y"])
    assert args.steps == 1 and args.overrides == ["optim.base_lr=0.3", "x=y"]
    args = build_parser().parse_args(["pretrain", "--steps", "2"])
    assert args.steps == 2 and args.overrides == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--steps", "1", "--epochs", "2"])
    args = build_parser().parse_args(["masks", "d", "--out", "o", "--method", "grid"])
    assert args.data == "d" and args.method == "grid"


def test_cityscapes_augmentations_differ_between_items_with_workers(tmp_path):
    from test_eval_cityscapes import make_cityscapes

    from detcon.evaluation.cityscapes import CityscapesSegmentation
    from detcon.evaluation.voc import TrainTransform

    root = make_cityscapes(tmp_path / "cs")
    ds = CityscapesSegmentation(root, "train", TrainTransform(16, scale_range=(0.5, 2.0), seed=0))
    first, second = _epochs(ds)
    sizes = [[tuple(m.shape) for _, m in e] for e in (first, second)]
    assert sizes[0] == sizes[1] == [(16, 16)] * len(ds)
    # the same images are not cut the same way by the two workers, nor again next epoch
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize(
    "argv", [["--steps", "-3"], ["train.log_every=0"], ["--steps", "1", "optim.momentum=1"]]
)
def test_pretrain_cli_out_of_range_is_exit_2(tmp_path, argv, caplog):
    try:
        rc = main(["pretrain", *argv, f"train.out={tmp_path / 'run'}"])
    except SystemExit as stop:  # argparse refuses --steps -3 itself (usage + one line)
        rc = stop.code
    assert rc == 2
    assert not (tmp_path / "run").exists()


def test_mask_cache_entries_ignore_and_masks_removes_temp_files(tmp_path):
    import numpy as np
    from PIL import Image

    from detcon.cli import main
    from detcon.masks.cache import MaskCache

    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(data / f"{i}.png")
    cache_dir = tmp_path / "cache"
    assert main(["masks", str(data), "--out", str(cache_dir), "--method", "grid", "--quiet"]) == 0
    cache = MaskCache(cache_dir)
    entry = next(cache.folder.glob("*/*.npz"))
    stale = entry.with_name(f".{entry.name}.abcd1234.tmp.npz")  # a kill during a write
    stale.write_bytes(entry.read_bytes())
    assert len(list(cache.entries())) == 3  # a temp file is never an entry
    assert main(["masks", str(data), "--out", str(cache_dir), "--method", "grid", "--quiet"]) == 0
    assert not stale.exists() and entry.exists()


def test_pretrain_steps_and_epochs_must_be_positive(capsys):
    from detcon.cli import main

    for flag in ("--steps", "--epochs"):
        with pytest.raises(SystemExit) as err:
            main(["pretrain", flag, "0"])
        assert err.value.code == 2
        assert "must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_mask_cache_of_another_folder_is_refused_up_front(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from detcon.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, shade in ((a, 30), (b, 200)):
        folder.mkdir()
        for i in range(4):
            img = np.full((64, 64, 3), shade + 10 * i, np.uint8)
            img[:32] = 255 - img[:32]
            Image.fromarray(img).save(folder / f"{folder.name}{i}.png")
    cache = tmp_path / "cache_a"
    assert main(["masks", str(a), "--out", str(cache), "--method", "grid", "--quiet"]) == 0
    tiny = [
        "--backbone",
        "resnet18",
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "model.proj_hidden=32",
        "model.proj_dim=16",
        "model.pred_hidden=32",
        "masks.num_masks=2",
        "train.device=cpu",
        "train.progress=false",
        "data.num_workers=0",
        "train.channels_last=false",
    ]
    run = tmp_path / "run"
    rc = main(["pretrain", "--data", str(b), "--masks", str(cache), "--out", str(run), *tiny])
    assert rc == 2 and not run.exists()
    assert "no entry for 4 of 4 images" in capsys.readouterr().err
    ok = main(["pretrain", "--data", str(a), "--masks", str(cache), "--out", str(run), *tiny])
    assert ok == 0  # the folder it was built for is covered
    with pytest.warns(UserWarning, match="mask missing or stale in cache, computing it"):
        rc = main(
            [
                "pretrain",
                "--data",
                str(b),
                "--masks",
                str(cache),
                "--out",
                str(tmp_path / "r2"),
                *tiny,
                "masks.compute_missing=true",
            ]
        )
    assert rc == 0


class _KillsItsProcess:
    """A grid generator that SIGKILLs its own process on an image of value 13 (as the OS
    kills an out-of-memory worker)."""

    def __new__(cls):
        from detcon.masks.generators import GridGenerator

        class Killer(GridGenerator):
            def _generate(self, image):
                import os
                import signal

                if int(image[0, 0, 0]) == 13:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super()._generate(image)

        return Killer(2, 2)


def test_a_dead_worker_skips_its_image_instead_of_hanging(tmp_path):
    import numpy as np
    from PIL import Image

    from detcon.commands.masks import generate_masks
    from detcon.masks.cache import MaskCache

    files = []
    for i, value in enumerate([40, 13, 80, 120, 160, 200]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(files[-1])
    gen = _KillsItsProcess()
    cache = MaskCache(tmp_path / "cache", gen)
    stats = generate_masks(files, gen, cache, workers=2, progress=False)
    assert stats.computed == 5 and [p for p, _ in stats.skipped] == [str(files[1])]
    assert "worker died" in stats.skipped[0][1]
    assert all(cache.get(f) is not None for i, f in enumerate(files) if i != 1)


def test_full_resolution_fh_skips_images_above_the_pixel_limit(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from detcon.cli import main
    from detcon.commands.masks import default_max_pixels
    from detcon.masks.generators import FHGenerator, GridGenerator

    data = tmp_path / "imgs"
    data.mkdir()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(data / "big.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "small.png")
    out = tmp_path / "cache"
    assert main(["masks", str(data), "--out", str(out), "--max-pixels", "0.005", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "images: 2  computed: 1  reused: 0  skipped: 1" in text, text
    assert (
        "too large for this worker's memory: 0.0 MP > --max-pixels"
        in (out / "skipped.txt").read_text()
    )
    # the default comes from the available memory, per worker; none for grids or --max-side
    assert default_max_pixels(FHGenerator(), 2) > default_max_pixels(FHGenerator(), 8) > 0
    assert default_max_pixels(GridGenerator(), 2) == 0
    assert default_max_pixels(FHGenerator(max_side=256), 2) == 0
