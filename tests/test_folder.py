"""hpo.training.folder and data.dataset = "folder": image folders generated here (PNG, JPEG, BMP,
grey and RGB, RGBA) in ImageFolder's layout; their splits, normalisation, cache (read by a second,
real process), every bad input's one line, and a whole study run on them through python -m hpo.run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from builders import write_study
from PIL import Image
from processes import hpo
from torchvision.io import write_jpeg, write_png

from hpo.config import DataSpec
from hpo.errors import HpoError
from hpo.training import data, folder
from hpo.training.folder import CACHE_DIR, read_folder

ROOT = Path(__file__).resolve().parents[1]
# The images are written with torchvision's encoders, which 0.29 deprecates (for TorchCodec): once per image.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


# ---------------------------------------------------------------- generated folders


def corner_images(n: int, cls: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 [n, C, size, size]: dim noise with a bright square in the class's corner (0: top left,
    1: top right, 2: bottom left, 3: bottom right): a signal any small net learns in a few epochs."""
    g = torch.Generator().manual_seed(seed * 100 + cls)
    x = torch.randint(0, 96, (n, channels, size, size), generator=g, dtype=torch.uint8)
    s = size // 3
    top, left = (0 if cls in (0, 1) else size - s), (0 if cls in (0, 2) else size - s)
    x[:, :, top : top + s, left : left + s] = 255
    return x


def write_images(part: Path, counts: dict[str, int], size: int = 16, channels: int = 3, seed: int = 0) -> dict:
    """PART/CLASS/NNN.png for each class (class i has the corner-i signal); {class: [paths]}."""
    written = {}
    for cls, (name, n) in enumerate(counts.items()):
        (part / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i, image in enumerate(corner_images(n, cls % 4, size, channels, seed)):
            path = part / name / f"{i:03d}.png"
            write_png(image, str(path))
            written[name].append(path)
    return written


def spec(path: Path, **fields) -> DataSpec:
    return DataSpec(dataset="folder", path=str(path), **fields)


def pixels(paths: list[Path]) -> torch.Tensor:
    """The PNGs' pixels as the reader should have them, read here through PIL."""
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in paths])


def cache_files(data_root: Path) -> list[Path]:
    return sorted((data_root / CACHE_DIR).glob("*.pt"))


@pytest.fixture
def fresh(monkeypatch):
    """This process forgets the folders it has read, as a new process would (the cache on disk stays)."""
    monkeypatch.setattr(folder, "_loaded", {})


# ---------------------------------------------------------------- shape, classes, splits, normalisation


def test_describe_a_folder(tmp_path):
    write_images(tmp_path / "img" / "train", {"cat": 10, "dog": 12, "owl": 14})
    info = data.describe(spec(tmp_path / "img"), tmp_path / "data")
    assert (info.name, info.channels, info.size, info.num_classes) == ("folder", 3, 16, 3)
    assert info.class_names == ("cat", "dog", "owl")  # sorted folder names, as ImageFolder numbers them
    assert (info.crop_padding, info.flip) == (2, False)
    d = data.load(spec(tmp_path / "img", val_fraction=0.2), seed=0, root=tmp_path / "data")
    assert dataclasses.replace(d.info, mean=info.mean, std=info.std) == info  # normalised by its training part
    assert len(d.train) + len(d.val) + len(d.test) == 36
    assert d.train.images.shape[1:] == (3, 16, 16) and d.train.images.dtype == torch.uint8
    assert d.train.labels.dtype == torch.int64 and set(d.train.labels.tolist()) == {0, 1, 2}


def _keys(*splits: data.Split) -> list:
    return sorted(
        (tuple(x.flatten().tolist()), int(y)) for s in splits for x, y in zip(s.images, s.labels, strict=True)
    )


def test_held_out_test_set_is_stratified_and_seeded(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 10, "b": 20, "c": 30})
    s = spec(tmp_path / "img", test_fraction=0.3, val_fraction=0.1)
    a, b, c = (data.load(s, seed=seed, root=tmp_path / "data") for seed in (1, 1, 2))
    assert a.test.labels.bincount().tolist() == [3, 6, 9]  # 30% of each class
    assert c.test.labels.bincount().tolist() == [3, 6, 9]
    assert (len(a.train), len(a.val), len(a.test)) == (38, 4, 18)  # val: 10% of the 42 left
    assert torch.equal(a.test.images, b.test.images) and not torch.equal(a.test.images, c.test.images)
    # train, val and test are a partition of the folder: nothing lost, nothing twice
    everything = data.Split(*folder.read_folder(s.path, 0, (tmp_path / "data").resolve()).train)
    assert _keys(a.train, a.val, a.test) == _keys(everything)
    # the recorded split seed, not the study seed, decides when it is set (a trial's config names it)
    recorded = dataclasses.replace(s, split_seed=1)
    assert torch.equal(data.load(recorded, seed=2, root=tmp_path / "data").test.images, a.test.images)


def test_a_small_class_keeps_one_test_image_and_a_single_image_stays_in_train(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 2, "b": 1, "c": 20})
    d = data.load(spec(tmp_path / "img", val_fraction=0.2), seed=0, root=tmp_path / "data")
    assert d.test.labels.bincount(minlength=3).tolist() == [1, 0, 4]


def test_a_test_folder_is_the_test_set(tmp_path):
    train = write_images(tmp_path / "img" / "train", {"a": 12, "b": 12}, seed=1)
    test = write_images(tmp_path / "img" / "test", {"a": 3, "b": 5}, seed=2)
    d = data.load(spec(tmp_path / "img", test_fraction=0.5, val_fraction=0.25), seed=0, root=tmp_path / "data")
    assert d.test.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # all of test/, in order; test_fraction unused
    assert torch.equal(d.test.images, pixels(test["a"] + test["b"]))
    assert (len(d.train), len(d.val)) == (18, 6)
    assert _keys(d.train, d.val) == _keys(
        data.Split(pixels(train["a"] + train["b"]), torch.tensor([0] * 12 + [1] * 12))
    )


def test_mean_and_std_are_the_training_images(tmp_path):
    train = write_images(tmp_path / "img" / "train", {"a": 6, "b": 6})
    bright = tmp_path / "img" / "test"
    for name in ("a", "b"):
        (bright / name).mkdir(parents=True)
        write_png(torch.full((3, 16, 16), 250, dtype=torch.uint8), str(bright / name / "x.png"))
    info = data.describe(spec(tmp_path / "img"), tmp_path / "data")
    x = pixels(train["a"] + train["b"]).double() / 255  # over train/ only: the bright test images are not in it
    expected_mean = x.mean(dim=(0, 2, 3))
    expected_std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert info.mean == pytest.approx(expected_mean.tolist(), abs=1e-9)
    assert info.std == pytest.approx(expected_std.tolist(), abs=1e-9)
    assert max(info.mean) < 0.4  # and far from what the bright test images would have made it


def test_mean_and_std_without_a_test_folder_are_the_training_parts(tmp_path):
    """describe() (no seed) gives all of train/'s; a load normalises by what it trains and validates
    on, never by the test share it holds out (which the seed draws)."""
    train = write_images(tmp_path / "img" / "train", {"a": 7, "b": 9})
    info = data.describe(spec(tmp_path / "img"), tmp_path / "data")
    x = pixels(train["a"] + train["b"]).double() / 255
    assert info.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    for seed in (0, 1):
        d = data.load(spec(tmp_path / "img", val_fraction=0.25), seed, root=tmp_path / "data")
        part = torch.cat([d.train.images, d.val.images]).double() / 255
        assert d.info.mean == pytest.approx(part.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
        assert d.info.std == pytest.approx(part.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
        assert d.info.mean != pytest.approx(info.mean, abs=1e-6)  # the test share is left out


def test_a_constant_channel_gets_a_std_that_normalising_can_divide_by(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "img" / "train" / name).mkdir(parents=True)
        for i in range(3):
            write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), str(tmp_path / "img" / "train" / name / f"{i}.png"))
    info = data.describe(spec(tmp_path / "img"), tmp_path / "data")
    assert info.mean == (0.0,) and info.std == (pytest.approx(1 / 255),)


# ---------------------------------------------------------------- formats, channels, sizes


def test_grey_images_stay_one_channel(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 4, "b": 4}, channels=1)
    img = Image.fromarray(np.full((16, 16), 40, dtype=np.uint8), "L")
    img.save(tmp_path / "img" / "train" / "b" / "z.bmp")  # .bmp: through PIL, as ImageFolder reads it
    write_jpeg(corner_images(1, 0, channels=1)[0], str(tmp_path / "img" / "train" / "a" / "z.jpg"))
    d = data.load(spec(tmp_path / "img", val_fraction=0.3), seed=0, root=tmp_path / "data")
    assert d.info.channels == 1 and len(d.info.mean) == len(d.info.std) == 1
    assert d.train.images.shape[1:] == (1, 16, 16)
    images = torch.cat([d.train.images, d.val.images, d.test.images])
    assert len(images) == 10 and (images == 40).flatten(1).all(1).sum() == 1  # the BMP, pixel for pixel


def test_rgba_loses_its_alpha_and_jpeg_is_read(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 3, "b": 3})
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10  # red, nearly transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img" / "train" / "a" / "rgba.png")
    write_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8), str(tmp_path / "img" / "train" / "b" / "grey.jpeg"))
    everything = read_folder(tmp_path / "img", 0, tmp_path / "data")
    x, y = everything.train
    assert everything.info.channels == 3 and len(y) == 8
    assert x[3].tolist() == torch.tensor([200, 0, 0]).view(3, 1, 1).expand(3, 16, 16).tolist()  # a: 3 PNGs, then rgba
    assert (x[7].int() - 128).abs().max() <= 2  # the JPEG of flat grey: grey, give or take its rounding


def test_the_most_common_size_wins_and_others_are_resized(tmp_path):
    train = write_images(tmp_path / "img" / "train", {"a": 5, "b": 5}, size=16)
    write_images(tmp_path / "img" / "train", {"a": 2}, size=24, seed=5)  # overwrites a/000, a/001 at 24x24
    odd = tmp_path / "img" / "train" / "b" / "wide.png"
    write_png(torch.full((3, 10, 20), 255, dtype=torch.uint8), str(odd))
    x, _ = read_folder(tmp_path / "img", 0, tmp_path / "data").train
    assert x.shape == (11, 3, 16, 16)
    assert torch.equal(x[2:5], pixels(train["a"][2:5]))  # already 16x16: kept pixel for pixel
    assert torch.equal(x[-1], torch.full((3, 16, 16), 255, dtype=torch.uint8))  # 10x20 resized, not cropped


def test_image_size_resizes_and_keys_its_own_cache(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 4, "b": 4}, size=16)
    native = data.describe(spec(tmp_path / "img"), tmp_path / "data")
    small = data.load(spec(tmp_path / "img", image_size=8, val_fraction=0.25), seed=0, root=tmp_path / "data")
    assert (native.size, small.info.size, small.info.crop_padding) == (16, 8, 1)
    assert small.train.images.shape[1:] == (3, 8, 8)
    assert len(cache_files(tmp_path / "data")) == 2  # one per side: switching back decodes nothing


# ---------------------------------------------------------------- the cache


def test_the_cache_is_written_once_and_read_by_another_process(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 5, "b": 5})
    info = data.describe(spec(tmp_path / "img"), tmp_path / "data")
    (cache,) = cache_files(tmp_path / "data")
    before = cache.stat().st_mtime_ns
    program = (
        "import json, sys; from hpo import cli; from hpo.config import DataSpec; from hpo.training import data; "
        "cli.show_logs(); "
        "info = data.describe(DataSpec(dataset='folder', path=sys.argv[1]), sys.argv[2]); "
        "print(json.dumps([info.size, info.num_classes, info.class_names, info.mean, info.std]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "img"), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert f"{tmp_path / 'img'}: 10 images read from the cache {cache}" in out.stderr
    assert "decoded" not in out.stderr
    assert json.loads(out.stdout) == [16, 2, ["a", "b"], list(info.mean), list(info.std)]
    assert cache.stat().st_mtime_ns == before and cache_files(tmp_path / "data") == [cache]


def test_a_changed_or_added_image_makes_a_new_cache(tmp_path, fresh):
    train = write_images(tmp_path / "img" / "train", {"a": 4, "b": 4})
    first = read_folder(tmp_path / "img", 0, tmp_path / "data")
    (old,) = cache_files(tmp_path / "data")
    write_png(torch.full((3, 16, 16), 7, dtype=torch.uint8), str(train["b"][0]))
    changed = read_folder(tmp_path / "img", 0, tmp_path / "data")
    assert torch.equal(changed.train[0][4], torch.full((3, 16, 16), 7, dtype=torch.uint8))
    assert not torch.equal(first.train[0][4], changed.train[0][4])
    (new,) = cache_files(tmp_path / "data")  # the stale cache is gone
    assert new != old
    write_png(torch.zeros(3, 16, 16, dtype=torch.uint8), str(tmp_path / "img" / "train" / "a" / "new.png"))
    assert len(read_folder(tmp_path / "img", 0, tmp_path / "data").train[1]) == 9


def test_a_damaged_cache_is_decoded_again(tmp_path, fresh, caplog):
    write_images(tmp_path / "img" / "train", {"a": 3, "b": 3})
    first = read_folder(tmp_path / "img", 0, tmp_path / "data")
    (cache,) = cache_files(tmp_path / "data")
    cache.write_bytes(cache.read_bytes()[:100])  # as if cut short (never by us: we write and rename)
    folder._loaded.clear()
    with caplog.at_level("INFO", logger="hpo"):
        again = read_folder(tmp_path / "img", 0, tmp_path / "data")
    assert "is unreadable" in caplog.text and torch.equal(again.train[0], first.train[0])
    assert torch.load(cache, weights_only=True)["train_x"].shape == (6, 3, 16, 16)  # rewritten whole


def test_an_unwritable_data_folder_only_costs_the_cache(tmp_path, fresh, caplog):
    write_images(tmp_path / "img" / "train", {"a": 3, "b": 3})
    blocked = tmp_path / "data"
    blocked.mkdir()
    (blocked / CACHE_DIR).write_text("a file where the cache folder would be")
    with caplog.at_level("WARNING", logger="hpo"):
        got = read_folder(tmp_path / "img", 0, blocked)
    assert len(got.train[1]) == 6 and "could not cache the decoded images" in caplog.text


# ---------------------------------------------------------------- bad folders: one line each


def _bad(root: Path) -> str:
    with pytest.raises(HpoError) as error:
        data.describe(spec(root), root.parent / "data")
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_folder(tmp_path):
    assert _bad(tmp_path / "nowhere").startswith(f"data.path: no folder {tmp_path / 'nowhere'}")


def test_no_train_folder(tmp_path):
    (tmp_path / "img" / "cat").mkdir(parents=True)
    message = _bad(tmp_path / "img")
    assert f"{tmp_path / 'img'} has no train/ folder" in message and "train/CLASS/" in message


def test_unreadable_image_is_named(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 3, "b": 3})
    broken = tmp_path / "img" / "train" / "b" / "001.png"
    broken.write_bytes(b"not a png at all")
    assert _bad(tmp_path / "img").startswith(f"cannot read the image {broken} (")


def test_empty_class_folder(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 3, "b": 3})
    (tmp_path / "img" / "train" / "c").mkdir()
    (tmp_path / "img" / "train" / "c" / "notes.txt").write_text("not an image")
    assert _bad(tmp_path / "img").startswith(f"{tmp_path / 'img' / 'train' / 'c'} holds no images (")


def test_a_single_class(tmp_path):
    write_images(tmp_path / "img" / "train", {"only": 5})
    message = _bad(tmp_path / "img")
    assert (
        message.startswith(f"{tmp_path / 'img' / 'train'} holds one class folder (only)") and "at least two" in message
    )


def test_mixed_channel_counts_name_a_file_of_each(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 2})
    write_images(tmp_path / "img" / "train", {"b": 2}, channels=1)
    message = _bad(tmp_path / "img")
    grey, rgb = tmp_path / "img" / "train" / "b" / "000.png", tmp_path / "img" / "train" / "a" / "000.png"
    assert f"{grey} is grayscale" in message and f"{rgb} is RGB" in message


def test_test_classes_must_match_train(tmp_path):
    write_images(tmp_path / "img" / "train", {"a": 3, "b": 3, "c": 3})
    write_images(tmp_path / "img" / "test", {"a": 1, "b": 1, "d": 1})
    message = _bad(tmp_path / "img")
    assert message.startswith(f"{tmp_path / 'img' / 'test'} has other classes than {tmp_path / 'img' / 'train'}")
    assert "(no c; d not in train/)" in message


# ---------------------------------------------------------------- a study on a folder, end to end

FOLDER_STUDY = """
description = "four corners"
seed = 0
[data]
dataset = "folder"
path = "images"
val_fraction = 0.25
[model]
name = "lenet5"
[train]
epochs = 3
batch_size = 16
optimizer = "adam"
lr = 0.002
threads = 1
[search]
lr = { low = 1e-3, high = 3e-3, log = true }
"""


def test_a_study_on_an_image_folder(tmp_path):
    study = write_study(tmp_path / "corners", FOLDER_STUDY)
    write_images(study / "images" / "train", {"nw": 60, "ne": 60, "sw": 60, "se": 60})
    store = f"sqlite:///{tmp_path / 'store.db'}"
    elsewhere = tmp_path / "elsewhere"  # the working directory: data.path is the study folder's, not its
    elsewhere.mkdir()
    # --workers 1: `auto` sizes the net from DATASETS (hpo.runs.workers), which has no entry for a folder
    args = ("--study", str(study), "--trials", "2", "--storage", store, "--workers", "1")
    ran = hpo(*args, cwd=elsewhere, env={"HPO_DATA_DIR": str(tmp_path / "data")})
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "240 images of 4 classes decoded (16x16, 3 channel(s))" in ran.stderr
    trials = optuna.load_study(study_name="corners", storage=store).trials
    assert len(trials) == 2
    assert max(t.value for t in trials if t.value is not None) > 1.5 * 25  # chance is 25%: four classes
    recorded = trials[0].user_attrs["config"]["data"]
    assert recorded["path"] == str(study / "images") and recorded["dataset"] == "folder"


def test_a_study_on_a_bad_folder_changes_no_store(tmp_path):
    study = write_study(tmp_path / "corners", FOLDER_STUDY)
    write_images(study / "images" / "train", {"nw": 3})  # one class
    db = tmp_path / "store.db"
    args = ("--study", str(study), "--trials", "2", "--storage", f"sqlite:///{db}", "--workers", "1")
    code, _, err = hpo(*args, cwd=tmp_path, env={"HPO_DATA_DIR": str(tmp_path / "data")})
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {study / 'images' / 'train'} holds one class folder (nw): "
        "a classifier needs at least two, one folder of images per class"
    ]
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []
