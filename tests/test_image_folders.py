"""Image folders of one's own (any classes, sizes and modes) and where the data comes from
(kd2m.data.resolve_source), on small generated folders and fake torchvision files. Nothing
is downloaded: a "download" is a monkeypatched torchvision function that writes the fake
files, or one that fails as without network."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from PIL import Image

import kd2m.data as kdata
from kd2m._io import FileError
from kd2m.data import (
    DATASETS,
    DataNotFoundError,
    Loader,
    folder_name,
    load_data,
    resolve_source,
    tensor_sha256,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _expected_rgb(img: Image.Image, size: int) -> np.ndarray:
    """Independent reference: RGB by numpy (palette lookup, gray -> 3 channels, alpha
    dropped) and torch's antialiased bilinear resize (matches PIL's to 1 grey level)."""
    if img.mode == "P":
        pal = np.array(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
        a = pal[np.asarray(img)]
    elif img.mode == "L":
        a = np.repeat(np.asarray(img)[:, :, None], 3, axis=2)
    elif img.mode == "I;16":
        g = np.clip(np.rint(np.asarray(img).astype(np.float64) / 257), 0, 255).astype(np.uint8)
        a = np.repeat(g[:, :, None], 3, axis=2)
    else:
        a = np.asarray(img)[:, :, :3]
    if a.shape[:2] != (size, size):
        t = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].double()
        t = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        a = t[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)
    return a.transpose(2, 0, 1)


def _make_image(kind: str, shape: tuple[int, int], rng) -> Image.Image:
    h, w = shape
    if kind == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if kind == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if kind == "P":
        im = Image.fromarray(rng.integers(0, 16, (h, w), dtype=np.uint8), "P")
        im.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tolist())
        return im
    if kind == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _write_folder(base: Path, classes, spec, size=32, seed=0) -> dict:
    """A PNG tree; ``spec[split]`` is a list of (mode, (h, w)) per image of each class.
    Returns the expected uint8 tensors in load order (class, then file name)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, c in enumerate(sorted(classes)):
            (base / split / c).mkdir(parents=True)
            for i, (mode, shape) in enumerate(spec[split]):
                img = _make_image(mode, shape, rng)
                img.save(base / split / c / f"{i:03d}.png")
                with Image.open(base / split / c / f"{i:03d}.png") as back:  # as stored
                    xs.append(_expected_rgb(back, size))
                ys.append(label)
        out[f"x_{split}"] = torch.from_numpy(np.stack(xs))
        out[f"y_{split}"] = torch.tensor(ys, dtype=torch.int64)
    return out


MIXED = {
    "train": [
        ("L", (28, 28)),
        ("P", (32, 32)),
        ("RGBA", (40, 24)),
        ("RGB", (64, 64)),
        ("I;16", (32, 32)),
        ("RGB", (32, 32)),
    ],
    "test": [("RGBA", (32, 32)), ("L", (17, 50))],
}


def _digits(base: Path, n_train=4, n_test=2, seed=0) -> None:
    """28x28 grayscale PNGs, classes 0..9, each class its own brightness (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for d in range(10):
            (base / split / str(d)).mkdir(parents=True)
            for i in range(n):
                a = np.clip(d * 25 + rng.normal(0, 10, (28, 28)), 0, 255).astype(np.uint8)
                Image.fromarray(a, "L").save(base / split / str(d) / f"{i}.png")


# --------------------------------------------------------------------------- item 4


def test_any_sizes_and_modes_become_rgb_at_the_profile_size(tmp_path):
    classes = ["zebra", "ant", "Moth"]  # sorted: Moth, ant, zebra
    expected = _write_folder(tmp_path / "mixed", classes, MIXED)
    data = load_data(folder=tmp_path / "mixed", root=tmp_path / "data")
    assert data.name == "mixed" and data.classes == ["Moth", "ant", "zebra"]
    assert data.num_classes == 3 and data.info.classes == ("Moth", "ant", "zebra")
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert torch.equal(y, expected[f"y_{split}"])
        diff = (x.int() - expected[f"x_{split}"].int()).abs()
        exact = [i for i, (_, s) in enumerate(MIXED[split] * 3) if s == (32, 32)]
        assert int(diff[exact].max()) == 0  # no resampling: exact pixels
        assert int(diff.max()) <= 1  # resized: PIL vs torch antialiased bilinear
    prov = data.provenance
    assert prov["source"] == "folder" and prov["stats"] == "train split"
    assert prov["image_size"] == 32 and prov["n_train"] == 18 and prov["n_test"] == 6
    json.dumps(prov)


def test_statistics_of_the_training_split_in_cache_record_and_loader(tmp_path):
    _write_folder(tmp_path / "f", ["a", "b"], MIXED)
    data = load_data(folder=tmp_path / "f", root=tmp_path / "data")
    f = data.x_train.double() / 255  # independent: torch's own mean/std over all pixels
    np.testing.assert_allclose(data.info.mean, f.mean((0, 2, 3)).numpy(), atol=1e-12)
    np.testing.assert_allclose(data.info.std, f.std((0, 2, 3), unbiased=False).numpy(), atol=1e-12)
    assert data.provenance["mean"] == list(data.info.mean)
    assert data.provenance["std"] == list(data.info.std)
    blob = torch.load(data.provenance["cache_file"], weights_only=True)
    assert blob["provenance"]["mean"] == list(data.info.mean)  # stored in the cache
    again = load_data(folder=tmp_path / "f", root=tmp_path / "data")  # read from the cache
    assert again.info == data.info
    assert again.provenance["cache_file"] == data.provenance["cache_file"]
    loader = Loader.from_data(data, "test", batch_size=64)
    x, _ = next(loader.epoch(0))
    ref = (
        data.x_test.double() / 255 - torch.tensor(data.info.mean).view(1, 3, 1, 1)
    ) / torch.tensor(data.info.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), ref, atol=1e-5, rtol=0)


def test_digit_classes_grayscale_and_image_size(tmp_path):
    _digits(tmp_path / "digits")
    data = load_data(folder=tmp_path / "digits", root=tmp_path / "data")
    assert data.classes == [str(d) for d in range(10)] and data.num_classes == 10
    assert torch.equal(torch.bincount(data.y_train), torch.full((10,), 4))
    # grayscale: the three channels are equal, and so are their statistics
    assert torch.equal(data.x_train[:, 0], data.x_train[:, 1])
    assert data.info.mean[0] == data.info.mean[2]
    small = load_data(folder=tmp_path / "digits", root=tmp_path / "data", image_size=28)
    assert small.x_train.shape[1:] == (3, 28, 28)
    with Image.open(tmp_path / "digits" / "train" / "3" / "0.png") as im:  # not resampled
        assert torch.equal(small.x_train[12, 0], torch.from_numpy(np.array(im)))
    assert small.provenance["cache_file"] != data.provenance["cache_file"]


def test_nested_subfolder_and_archive_give_the_same_data(tmp_path):
    _write_folder(tmp_path / "plain", ["x", "y"], MIXED)
    nested = tmp_path / "wrapped" / "inner"
    _write_folder(nested, ["x", "y"], MIXED)
    archive = tmp_path / "plain.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "plain", arcname="plain")  # one top-level folder
    root = tmp_path / "data"
    a = load_data(folder=tmp_path / "plain", root=root)
    b = load_data(folder=tmp_path / "wrapped", root=root)
    c = load_data(folder=archive, root=root)
    assert c.name == "plain" == folder_name(archive) and b.name == "wrapped"
    assert (
        a.provenance["content_sha256"]
        == b.provenance["content_sha256"]
        == c.provenance["content_sha256"]
    )
    assert c.provenance["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert b.provenance["path"] == str(nested.resolve())
    again = load_data(folder=archive, root=root)  # cached: not extracted again
    assert again.provenance["cache_file"] == c.provenance["cache_file"]


def test_parallel_decode_equals_serial(tmp_path, monkeypatch):
    _write_folder(tmp_path / "f", ["a", "b", "c"], MIXED)
    base = kdata._layout_root(tmp_path / "f")
    _, train_files, _ = kdata._folder_classes(base)
    serial = kdata._decode(train_files, 32, resize=True)
    monkeypatch.setattr(kdata, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(kdata, "DECODE_CHUNK", 4)
    monkeypatch.setattr(kdata.os, "cpu_count", lambda: 3)
    pooled = kdata._decode(train_files, 32, resize=True)  # forked processes on Linux
    monkeypatch.setattr(kdata.sys, "platform", "elsewhere")
    threaded = kdata._decode(train_files, 32, resize=True)  # the thread pool
    for out in (pooled, threaded):
        assert torch.equal(out[0], serial[0]) and torch.equal(out[1], serial[1])


def test_folder_name():
    assert folder_name("/x/My Digits.tar.gz") == "my-digits"
    assert folder_name("/x/cifar10") == "cifar10-folder"  # never a known dataset's name
    assert folder_name("/x/cifar10-jpeg.tar.gz") == "cifar10-jpeg"


def test_folder_errors_name_the_problem(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _write_folder(tmp_path / "one", ["only"], {"train": [("L", (8, 8))], "test": [("L", (8, 8))]})
    with pytest.raises(ValueError, match="at least 2"):
        load_data(folder=tmp_path / "one", root=root)
    tree = tmp_path / "mismatch"
    _write_folder(tree, ["a", "b"], {"train": [("L", (8, 8))], "test": [("L", (8, 8))]})
    (tree / "test" / "b").rename(tree / "test" / "c")
    with pytest.raises(ValueError, match=r"only in train/: \['b'\], only in test/: \['c'\]"):
        load_data(folder=tree, root=root)
    tree = tmp_path / "empty"
    _write_folder(tree, ["a", "b"], {"train": [("L", (8, 8))], "test": [("L", (8, 8))]})
    (tree / "test" / "b" / "000.png").unlink()
    with pytest.raises(ValueError, match=r"no images .* for classes \['b'\]"):
        load_data(folder=tree, root=root)
    tree = tmp_path / "broken"
    _write_folder(tree, ["a", "b"], {"train": [("L", (8, 8))], "test": [("L", (8, 8))]})
    (tree / "train" / "a" / "000.png").write_bytes(b"not a png")
    with pytest.raises(FileError, match="cannot decode image .*000.png .*delete the file"):
        load_data(folder=tree, root=root)
    monkeypatch.setattr(kdata, "PARALLEL_MIN_IMAGES", 1)  # the same from a worker process
    monkeypatch.setattr(kdata, "DECODE_CHUNK", 1)
    monkeypatch.setattr(kdata.os, "cpu_count", lambda: 2)
    with pytest.raises(FileError, match="cannot decode image .*000.png .*delete the file"):
        load_data(folder=tree, root=root)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_data(folder=tmp_path / "missing", root=root)
    with pytest.raises(ValueError, match="folder=PATH"):
        load_data("mnist", root=root)
    with pytest.raises(ValueError, match="image_size=28: cifar10"):
        load_data("cifar10", root=root, image_size=28)


def test_more_images_than_the_folder_holds(tmp_path):
    _digits(tmp_path / "digits", n_train=3, n_test=1)
    data = load_data(folder=tmp_path / "digits", root=tmp_path / "data")
    with pytest.raises(ValueError, match="n_train=5000 .* digits has 30 training images"):
        data.subset(5000, None)
    with pytest.raises(ValueError, match="n_test=11 .* digits has 10 test images"):
        data.subset(None, 11)
    assert len(data.subset(None, None).y_train) == 30  # None: all of them


def test_known_datasets_keep_their_official_statistics(tmp_path):
    classes = DATASETS["cifar10"].classes
    _write_folder(
        tmp_path / "cifar10", classes, {"train": [("RGB", (32, 32))], "test": [("RGB", (32, 32))]}
    )
    known = load_data("cifar10", folder=tmp_path / "cifar10", root=tmp_path / "data")
    assert known.info is DATASETS["cifar10"] and known.provenance["stats"] == "official"
    assert known.provenance["mean"] == list(DATASETS["cifar10"].mean)
    # the same folder without a dataset name is a folder of one's own, with its own stats
    own = load_data(folder=tmp_path / "cifar10", root=tmp_path / "data")
    assert own.name == "cifar10-folder" and own.provenance["stats"] == "train split"
    assert own.info.mean != DATASETS["cifar10"].mean
    assert own.provenance["content_sha256"] == known.provenance["content_sha256"]


def test_configs_of_a_folder_and_unchanged_hashes(tmp_path, monkeypatch):
    from kd2m.book.experiments import table1_configs
    from kd2m.profiles import student_config, teacher_config
    from kd2m.runs import RunConfig, run

    monkeypatch.setenv("KD2M_DATA", str(tmp_path / "data"))
    # the runs of the known datasets keep their names (the committed outputs depend on them)
    # (the cpu teacher of data/results/cpu-teacher, trained on all 50,000 images)
    assert teacher_config("cpu", "cifar10", source="folder").hash == "4a07a34407ee"
    assert student_config("paper", "svhn", None, epochs=1).hash == "14c87cd42777"
    _digits(tmp_path / "digits")
    t = teacher_config("cpu", folder=tmp_path / "digits")
    sha = load_data(folder=tmp_path / "digits", root=tmp_path / "data").provenance["content_sha256"]
    assert (t.dataset, t.source, t.data_sha256) == ("digits", "folder", sha)
    s = student_config("cpu", metric="wasserstein", folder=tmp_path / "digits", image_size=28)
    assert s.teacher.data_sha256 == s.data_sha256 != sha  # 28x28: other content
    assert s.teacher.image_size == 28
    assert s.hash != student_config("cpu", metric="wasserstein", folder=tmp_path / "digits").hash
    cfgs = table1_configs(
        "cpu", "digits", ["E1"], [42], source="folder", folder=tmp_path / "digits"
    )
    assert {c.data_sha256 for cs in cfgs.values() for c in cs} == {sha}
    with pytest.raises(ValueError, match="data_sha256"):
        RunConfig(role="teacher", dataset="digits", source="folder")
    with pytest.raises(ValueError, match="dataset='digits'"):
        RunConfig(role="teacher", dataset="digits", data_sha256=sha)
    with pytest.raises(ValueError, match="image_size=28"):
        RunConfig(role="teacher", dataset="cifar10", image_size=28)
    # a config made for other images refuses this folder
    other = t.replace(data_sha256="0" * 64, epochs=1, n_train=None, n_test=None)
    with pytest.raises(ValueError, match="holds other images"):
        run(other, folder=tmp_path / "digits", device="cpu", progress=False)


def test_cli_trains_a_teacher_on_a_digit_folder(tmp_path, monkeypatch, capsys):
    from kd2m.__main__ import main

    _digits(tmp_path / "digits", n_train=6, n_test=2)
    env = os.environ | {
        "KD2M_DATA": str(tmp_path / "data"),
        "KD2M_PROGRESS": "0",
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        sys.executable,
        "-m",
        "kd2m",
        "train",
        "teacher",
        "--folder",
        str(tmp_path / "digits"),
        "--device",
        "cpu",
    ]
    small = [
        "--set",
        "epochs=1",
        "--set",
        "width=4",
        "--set",
        "n_train=null",
        "--set",
        "n_test=null",
        "--set",
        "batch_size=32",
        "--set",
        "image_size=28",
    ]
    done = subprocess.run(cmd + small, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "digits-resnet20-teacher-s42" in done.stdout and "test accuracy" in done.stdout
    (rec_path,) = (tmp_path / "data" / "runs").glob("digits-*/record.json")
    rec = json.loads(rec_path.read_text())
    assert rec["status"] == "finished" and rec["config"]["dataset"] == "digits"
    assert rec["data"]["stats"] == "train split" and len(rec["data"]["mean"]) == 3
    assert rec["config"]["data_sha256"] == rec["data"]["content_sha256"]
    assert rec["config"]["image_size"] == rec["data"]["image_size"] == 28  # not resized
    blob = torch.load(rec_path.parent / "model.pt", weights_only=True)
    assert blob["num_classes"] == 10 and blob["model"]["head.weight"].shape[0] == 10
    # a subset of 5000 images is more than the folder holds
    monkeypatch.setenv("KD2M_DATA", str(tmp_path / "data"))
    assert main([*cmd[3:], "--set", "n_train=5000"]) == 2
    err = capsys.readouterr().err
    assert "n_train=5000" in err and "digits has 60 training images" in err


# --------------------------------------------------------------------------- item 5


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar10(root: Path, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """Fake CIFAR-10 in torchvision's on-disk format (python pickles under
    <root>/cifar10/cifar-10-batches-py); torchvision's md5 list is set to the fakes' md5s."""
    cls = tvd.CIFAR10
    base = root / "cifar10" / cls.base_folder
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    x_train = rng.integers(0, 256, (15, 3, 32, 32), dtype=np.uint8)
    train_list = []
    for k, (name, _) in enumerate(cls.train_list):
        part = x_train[3 * k : 3 * k + 3]
        entry = {"data": part.reshape(3, -1), "labels": [(3 * k + i) % 10 for i in range(3)]}
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
        train_list.append([name, _md5(base / name)])
    x_test = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    test_name = cls.test_list[0][0]
    (base / test_name).write_bytes(
        pickle.dumps({"data": x_test.reshape(10, -1), "labels": list(range(10))}, protocol=2)
    )
    meta = base / cls.meta["filename"]
    meta.write_bytes(pickle.dumps({cls.meta["key"]: list(DATASETS["cifar10"].classes)}))
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [[test_name, _md5(base / test_name)]])
    monkeypatch.setattr(cls, "meta", cls.meta | {"md5": _md5(meta)})
    return x_train, x_test


def test_resolve_source_prefers_the_offline_copy(tmp_path):
    copy = tmp_path / "copy"
    _write_folder(
        copy,
        DATASETS["cifar10"].classes,
        {"train": [("RGB", (32, 32))], "test": [("RGB", (32, 32))]},
    )
    src = resolve_source("cifar10", copy, download=False, root=tmp_path / "data")
    assert (src.source, src.folder, src.download) == ("folder", str(copy), False)
    assert str(copy.resolve()) in src.description and "image-folder copy" in src.description


def test_without_the_copy_torchvision_files_in_data_are_used(tmp_path, monkeypatch):
    root = tmp_path / "data"
    x_train, x_test = _write_cifar10(root, monkeypatch)
    src = resolve_source("cifar10", tmp_path / "absent.tar.gz", download=False, root=root)
    assert (src.source, src.folder, src.download) == ("torchvision", None, False)
    assert "official files" in src.description and str(root / "cifar10") in src.description
    data = load_data("cifar10", root=root, **src.args())
    assert torch.equal(data.x_train, torch.from_numpy(x_train))
    assert data.provenance["content_sha256"] == tensor_sha256(
        data.x_train, data.y_train, data.x_test, data.y_test
    )


def test_without_the_copy_torchvision_downloads_once(tmp_path, monkeypatch):
    root = tmp_path / "data"
    calls = []

    def fake_download(url, download_root, **kw):  # what the download leaves on disk
        calls.append(url)
        with monkeypatch.context() as m:  # write the files, keep the md5 patch below
            _write_cifar10(Path(download_root).parent, m)

    # the md5 list must describe the files the fake download writes: write them once
    # elsewhere to learn them (same seed, same bytes)
    _write_cifar10(tmp_path / "probe", monkeypatch)
    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", fake_download)
    src = resolve_source("cifar10", tmp_path / "absent", download="auto", root=root)
    assert len(calls) == 1 and "downloaded now into" in src.description
    assert (src.source, src.download) == ("torchvision", False)
    again = resolve_source("cifar10", tmp_path / "absent", download="auto", root=root)
    assert len(calls) == 1 and "downloaded" not in again.description  # once


def test_no_copy_and_no_network_one_message_with_both_ways_out(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network unavailable (test)")

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", no_network)
    copy = tmp_path / "cifar10-jpeg.tar.gz"
    with pytest.raises(DataNotFoundError) as err:
        resolve_source("cifar10", copy, download="auto", root=tmp_path / "data")
    msg = str(err.value)
    assert str(copy.resolve()) in msg and "network unavailable" in msg
    assert "Two ways out" in msg and "put the copy at" in msg
    with pytest.raises(DataNotFoundError) as err:
        resolve_source("cifar10", copy, download=False, root=tmp_path / "data")
    msg = str(err.value)
    assert "put the copy at" in msg and "download: auto" in msg and "--download" in msg
    with pytest.raises(ValueError, match="download='sometimes'"):
        resolve_source("cifar10", copy, download="sometimes", root=tmp_path / "data")


def test_book_data_args_say_which_data(tmp_path, monkeypatch):
    from kd2m.book.experiments import data_args, data_sources

    monkeypatch.setenv("KD2M_DATA", str(tmp_path / "data"))
    _write_cifar10(tmp_path / "data", monkeypatch)
    args = data_args("cifar10", {"cifar10": str(tmp_path / "absent")}, "auto")
    assert args["source"] == "torchvision" and args["folder"] is None
    assert "official files" in args["description"]
    assert data_sources(["cifar10"], {}, False) == args["description"]


def test_other_data_names_both_copies():
    from kd2m.book.experiments import other_data

    jpeg = {
        "data": {
            "source": "folder",
            "archive": "/x/cifar10-jpeg.tar.gz",
            "content_sha256": "a" * 64,
        }
    }
    official = {
        "data": {"source": "torchvision", "path": "/y/data/cifar10", "content_sha256": "b" * 64}
    }
    assert other_data(jpeg, dict(jpeg)) is None
    note = other_data(official, jpeg)
    assert "/x/cifar10-jpeg.tar.gz" in note and "/y/data/cifar10" in note
    assert "aaaaaaaaaaaa" in note and "bbbbbbbbbbbb" in note
    assert other_data({"data": {}}, {"data": {}}) is not None  # unknown: not the same
