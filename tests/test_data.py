"""Tests of kd2m.data: sources (torchvision's on-disk formats, image folders, archives),
the uint8 cache, subsets and the tensor Loader. Nothing is downloaded: the torchvision
sources are small files written here in torchvision's exact formats."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from kd2m.data import (
    DATASETS,
    DataNotFoundError,
    ImageData,
    Loader,
    channel_stats,
    load_data,
    tensor_sha256,
)

REPO = Path(__file__).resolve().parents[1]
CIFAR10_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


# --------------------------------------------------------------------------- fakes
# torchvision checks the md5 of each official file; the fake files are small, so each
# test replaces torchvision's md5 list (class attributes) with the fakes' real md5s via
# monkeypatch: the integrity check then runs and passes legitimately.


def _write_cifar(root: Path, monkeypatch, hundred: bool) -> dict:
    """Fake CIFAR-10 / CIFAR-100 python pickles as torchvision reads them."""
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    info = DATASETS["cifar100" if hundred else "cifar10"]
    base = root / info.name / cls.base_folder
    base.mkdir(parents=True)
    k = info.num_classes
    label_key = "fine_labels" if hundred else "labels"
    ntr = [2 * k] if hundred else [7, 6, 5, 4, 3]  # images per train file
    x_train = _images(sum(ntr), 1)
    y_train = np.arange(sum(ntr)) % k
    x_test, y_test = _images(k + 3, 2), (np.arange(k + 3) * 7) % k
    names = [n for n, _ in cls.train_list]
    train_list, start = [], 0
    for name, n in zip(names, ntr, strict=True):
        entry = {
            "batch_label": f"fake {name}",
            "data": x_train[start : start + n].reshape(n, -1),  # rows of R, G, B planes
            label_key: y_train[start : start + n].tolist(),
            "filenames": [f"img{i}.png" for i in range(start, start + n)],
        }
        if hundred:
            entry["coarse_labels"] = [0] * n
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
        train_list.append([name, _md5(base / name)])
        start += n
    test_name = cls.test_list[0][0]
    entry = {"data": x_test.reshape(len(x_test), -1), label_key: y_test.tolist()}
    (base / test_name).write_bytes(pickle.dumps(entry, protocol=2))
    meta_name, meta_key = cls.meta["filename"], cls.meta["key"]
    meta = {meta_key: list(info.classes)}
    if hundred:
        meta["coarse_label_names"] = [f"c{i}" for i in range(20)]
    (base / meta_name).write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [[test_name, _md5(base / test_name)]])
    monkeypatch.setattr(
        cls, "meta", {"filename": meta_name, "key": meta_key, "md5": _md5(base / meta_name)}
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _write_svhn(root: Path, monkeypatch) -> dict:
    """Fake SVHN .mat files: X (32, 32, 3, N) uint8, y (N, 1) with 10 meaning digit 0."""
    from scipy.io import savemat

    base = root / "svhn"
    base.mkdir(parents=True)
    split_list = {k: list(v) for k, v in tvd.SVHN.split_list.items()}
    out = {}
    for split, n, seed in (("train", 23, 3), ("test", 11, 4)):
        x = _images(n, seed)
        digits = np.arange(n) % 10
        y_file = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        path = base / split_list[split][1]
        savemat(path, {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)), "y": y_file})
        split_list[split][2] = _md5(path)
        out[f"x_{split}"], out[f"y_{split}"] = x, digits
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    return out


def _check_roundtrip(data: ImageData, expected: dict) -> None:
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(expected[f"x_{split}"]))
        assert torch.equal(y, torch.from_numpy(np.asarray(expected[f"y_{split}"], np.int64)))


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_torchvision_formats_roundtrip_and_cache(name, tmp_path, monkeypatch):
    if name == "svhn":
        expected = _write_svhn(tmp_path, monkeypatch)
    else:
        expected = _write_cifar(tmp_path, monkeypatch, hundred=name == "cifar100")
    data = load_data(name, source="torchvision", root=tmp_path, download=False)
    _check_roundtrip(data, expected)
    assert data.name == name and data.info is DATASETS[name]
    assert data.classes == list(DATASETS[name].classes)
    prov = data.provenance
    assert prov["source"] == "torchvision" and prov["path"] == str((tmp_path / name).resolve())
    assert prov["n_train"] == len(expected["y_train"]) and prov["n_test"] == len(expected["y_test"])
    cache = Path(prov["cache_file"])
    assert cache.parent == tmp_path / "cache" and cache.name.startswith(f"{name}-torchvision-")
    assert prov["cache_sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    assert prov["content_sha256"] == tensor_sha256(
        data.x_train, data.y_train, data.x_test, data.y_test
    )
    json.dumps(prov)  # goes into run records
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # atomic write left nothing
    # the second call reads the cache: the raw files are no longer needed
    shutil.rmtree(tmp_path / name)
    again = load_data(name, source="torchvision", root=tmp_path)
    _check_roundtrip(again, expected)
    assert again.provenance["content_sha256"] == prov["content_sha256"]


def test_missing_torchvision_data_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_data("cifar10", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert str((tmp_path / "nowhere" / "cifar10").resolve()) in msg
    assert "download=True" in msg and "folder=" in msg and "data_batch_1" in msg
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, RuntimeError)
    with pytest.raises(DataNotFoundError, match="train_32x32.mat"):
        load_data("svhn", source="torchvision", root=tmp_path)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network unavailable (test)")

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError, match="downloading cifar100") as err:
        load_data("cifar100", root=tmp_path, download=True)
    assert "network unavailable" in str(err.value) and "folder=" in str(err.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_data("mnist", root=tmp_path)
    with pytest.raises(ValueError, match="unknown source 'web'"):
        load_data("cifar10", source="web", root=tmp_path)
    with pytest.raises(ValueError, match="folder="):
        load_data("cifar10", source="folder", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_data("cifar10", root=tmp_path, folder=tmp_path / "missing")


def test_dataset_info():
    for name, info in DATASETS.items():
        assert info.name == name and len(info.classes) == info.num_classes
        assert list(info.classes) == sorted(info.classes)  # image folders sort to this order
        assert all(0 < m < 1 for m in info.mean) and all(0 < s < 0.5 for s in info.std)
    assert DATASETS["cifar10"].mean != DATASETS["cifar100"].mean  # the author's bug
    assert not DATASETS["svhn"].hflip and DATASETS["cifar10"].hflip
    assert DATASETS["cifar100"].num_classes == 100
    with pytest.raises(AttributeError):
        DATASETS["cifar10"].hflip = False  # frozen


def test_channel_stats_exact():
    x = torch.from_numpy(_images(9, 0))
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert np.allclose(mean, f.mean((0, 2, 3)).numpy(), atol=1e-12)
    assert np.allclose(std, f.std((0, 2, 3), unbiased=False).numpy(), atol=1e-12)


# --------------------------------------------------------------------------- folders


def _write_tree(base: Path, classes, n_train=2, n_test=1, seed=0) -> dict:
    """PNG image-folder tree; returns the images in load order (class, then file name)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        xs, ys = [], []
        for label, c in enumerate(sorted(classes)):
            (base / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(base / split / c / f"{i:04d}.png")
                xs.append(img.transpose(2, 0, 1))
                ys.append(label)
        out[f"x_{split}"], out[f"y_{split}"] = np.stack(xs), np.array(ys)
    return out


def test_folder_source(tmp_path):
    classes = DATASETS["cifar10"].classes
    expected = _write_tree(tmp_path / "tree", classes)
    (tmp_path / "tree" / "train" / "README.txt").write_text("ignored")
    data = load_data("cifar10", root=tmp_path / "data", folder=tmp_path / "tree")
    _check_roundtrip(data, expected)
    assert data.classes == list(classes)
    prov = data.provenance
    assert prov["source"] == "folder" and prov["path"] == str((tmp_path / "tree").resolve())
    assert Path(prov["cache_file"]).exists()
    again = load_data("cifar10", source="folder", root=tmp_path / "data", folder=tmp_path / "tree")
    assert again.provenance["cache_file"] == prov["cache_file"]
    _check_roundtrip(again, expected)


def test_folder_archive_extracted_once(tmp_path):
    classes = DATASETS["svhn"].classes
    expected = _write_tree(tmp_path / "src" / "svhn-png", classes, n_train=1, n_test=1)
    archive = tmp_path / "svhn-png.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # one top-level folder, like many archives
        tar.add(tmp_path / "src" / "svhn-png", arcname="svhn-png")
    root = tmp_path / "data"
    data = load_data("svhn", root=root, folder=archive)
    _check_roundtrip(data, expected)
    assert (root / "svhn-folder" / "svhn-png" / "train" / "7").is_dir()
    prov = data.provenance
    assert prov["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert prov["path"] == str((root / "svhn-folder" / "svhn-png").resolve())
    # cached: neither extracted nor decoded again
    shutil.rmtree(root / "svhn-folder")
    again = load_data("svhn", root=root, folder=archive)
    _check_roundtrip(again, expected)
    assert not (root / "svhn-folder").exists()


def test_folder_class_mismatch_raises(tmp_path):
    classes = list(DATASETS["cifar10"].classes)
    _write_tree(tmp_path / "tree", classes[:-1] + ["lorry"], n_train=1, n_test=1)
    with pytest.raises(ValueError, match="lorry") as err:
        load_data("cifar10", root=tmp_path / "data", folder=tmp_path / "tree")
    assert "truck" in str(err.value)
    _write_tree(tmp_path / "few", classes[:3], n_train=1, n_test=1)
    with pytest.raises(ValueError, match="do not match"):
        load_data("cifar10", root=tmp_path / "data", folder=tmp_path / "few")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no train/ and test/"):
        load_data("cifar10", root=tmp_path / "data", folder=tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_ARCHIVE.exists(), reason=f"{CIFAR10_ARCHIVE} not present")
def test_real_cifar10_jpeg_archive(tmp_path):
    data = load_data("cifar10", root=tmp_path, folder=CIFAR10_ARCHIVE)
    assert data.x_train.shape == (50000, 3, 32, 32) and data.x_test.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(data.y_train), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(data.y_test), torch.full((10,), 1000))
    assert data.classes == [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    info = DATASETS["cifar10"]
    mean, std = channel_stats(data.x_train)
    # JPEG q75 of the official images: means agree to ~2e-4, stds are ~2e-3 lower
    np.testing.assert_allclose(mean, info.mean, atol=1e-3)
    np.testing.assert_allclose(std, info.std, atol=4e-3)
    assert data.provenance["archive_sha256"] == (
        "0bfcb68717a0ecb0d51ed61034906a773d48d424d94b766a46d7d1c55702a4d9"
    )


# --------------------------------------------------------------------------- subset


def _fake_data(n_train=100, n_test=30, k=10, seed=0, skew=False) -> ImageData:
    y_train = torch.arange(n_train) % k
    if skew:  # class 0 three times as frequent
        y_train = torch.cat([torch.zeros(n_train // 2, dtype=torch.int64),
                             torch.arange(n_train - n_train // 2) % k])  # fmt: skip
    x_train, x_test = torch.from_numpy(_images(n_train, seed)), torch.from_numpy(_images(n_test, 9))
    y_test = torch.arange(n_test) % k
    prov = {"dataset": "cifar10", "content_sha256": tensor_sha256(x_train, y_train, x_test, y_test)}
    info = DATASETS["cifar10"]
    return ImageData("cifar10", x_train, y_train, x_test, y_test, list(info.classes), info, prov)


def test_subset_stratified_and_seeded():
    data = _fake_data()
    sub = data.subset(n_train=50, n_test=20, seed=1)
    assert torch.equal(torch.bincount(sub.y_train, minlength=10), torch.full((10,), 5))
    assert torch.equal(torch.bincount(sub.y_test, minlength=10), torch.full((10,), 2))
    assert torch.equal(sub.x_train, data.subset(n_train=50, n_test=20, seed=1).x_train)
    assert not torch.equal(sub.x_train, data.subset(n_train=50, n_test=20, seed=2).x_train)
    # images keep their labels: each subset image is an image of the parent with its label
    rows = {
        bytes(x.numpy().tobytes()): int(y) for x, y in zip(data.x_train, data.y_train, strict=True)
    }
    assert all(
        rows[bytes(x.numpy().tobytes())] == int(y)
        for x, y in zip(sub.x_train, sub.y_train, strict=True)
    )
    p = sub.provenance
    assert p["subset"]["n_train"] == 50 and p["subset"]["seed"] == 1 and p["n_test"] == 20
    assert p["subset"]["parent_content_sha256"] == data.provenance["content_sha256"]
    assert p["content_sha256"] == tensor_sha256(sub.x_train, sub.y_train, sub.x_test, sub.y_test)
    assert "subset" not in data.provenance  # parent untouched
    json.dumps(p)
    full = data.subset()
    assert torch.equal(full.x_train, data.x_train) and torch.equal(full.y_test, data.y_test)
    with pytest.raises(ValueError, match="n_train=101"):
        data.subset(n_train=101)
    with pytest.raises(ValueError, match="n_test=0"):
        data.subset(n_test=0)


def test_subset_proportional_on_imbalanced_classes():
    data = _fake_data(n_train=100, skew=True)  # class 0: 55, others 5 each
    sub = data.subset(n_train=20, seed=0)
    counts = torch.bincount(sub.y_train, minlength=10)
    assert int(counts.sum()) == 20 and int(counts[0]) == 11 and (counts[1:] == 1).all()


# --------------------------------------------------------------------------- Loader

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x.float() * s + m) * 255).round().to(torch.uint8)


def _loader(x, y=None, **kw) -> Loader:
    y = torch.arange(len(x)) if y is None else y  # labels = image ids
    kw.setdefault("batch_size", 8)
    kw.setdefault("train", True)
    return Loader(x, y, mean=MEAN, std=STD, **kw)


def _batches(loader: Loader, epoch: int):
    return list(loader.epoch(epoch))


def test_loader_eval_order_normalisation_and_partial_batch():
    x = torch.from_numpy(_images(21, 0))
    loader = _loader(x, batch_size=8, train=False)
    assert len(loader) == 3
    batches = _batches(loader, 0)
    assert [len(b[1]) for b in batches] == [8, 8, 5]
    xb, yb = batches[0]
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    ys = torch.cat([b[1] for b in batches])
    assert torch.equal(ys, torch.arange(21))  # fixed order, every sample once
    assert torch.equal(torch.cat([b[0] for b in batches]), _normalise(x))  # exact
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, _batches(loader, 5), strict=True))
    assert len(_loader(x, batch_size=8, train=False, drop_last=True)) == 2


def test_loader_train_permutation_without_augmentation_is_exact():
    x = torch.from_numpy(_images(20, 1))
    loader = _loader(x, batch_size=6, crop_padding=0, hflip=False, seed=3)
    assert len(loader) == 3  # drop_last defaults to True for training
    batches = _batches(loader, 0)
    ids = torch.cat([b[1] for b in batches])
    assert len(set(ids.tolist())) == 18 and not torch.equal(ids, torch.arange(18))
    for xb, yb in batches:
        assert torch.equal(xb, _normalise(x[yb]))
    full = _loader(x, batch_size=6, crop_padding=0, hflip=False, seed=3, drop_last=False)
    assert [len(b[1]) for b in _batches(full, 0)] == [6, 6, 6, 2]
    assert sorted(torch.cat([b[1] for b in _batches(full, 0)]).tolist()) == list(range(20))


def test_loader_replays_by_seed_and_epoch():
    x = torch.from_numpy(_images(32, 2))
    a, b = _loader(x, seed=7), _loader(x, seed=7)
    for (xa, ya), (xb, yb) in zip(_batches(a, 3), _batches(b, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e3, e4 = _batches(a, 3), _batches(a, 4)
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(e3, e4, strict=True))
    other = _batches(_loader(x, seed=8), 3)
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(e3, other, strict=True))
    # replaying epoch 3 after epoch 4 (a resumed run) gives epoch 3 again
    assert all(torch.equal(p[0], q[0]) for p, q in zip(e3, _batches(a, 3), strict=True))


def _pattern(n: int) -> torch.Tensor:
    """Every pixel says where it is: R = row + 1, G = column + 1, B = 255 (0 = padding)."""
    r = torch.arange(1, 33).view(32, 1).expand(32, 32)
    c = torch.arange(1, 33).view(1, 32).expand(32, 32)
    img = torch.stack([r, c, torch.full((32, 32), 255)]).to(torch.uint8)
    return img.unsqueeze(0).repeat(n, 1, 1, 1)


def _shifts(xb: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(dy, dx, flipped) of each augmented pattern image, checking it is a pure shift."""
    out = []
    u = _unnormalise(xb).long()
    ii = torch.arange(32).view(32, 1).expand(32, 32)
    jj = torch.arange(32).view(1, 32).expand(32, 32)
    for img in u:
        valid = img[2] == 255
        assert torch.equal(img[:, ~valid], torch.zeros_like(img[:, ~valid]))  # zero padding
        assert int(valid.sum()) >= 28 * 28
        dy = img[0][valid] - 1 - ii[valid]
        assert (dy == dy[0]).all()
        col = img[1][valid] - 1
        flipped = bool((col - jj[valid] != col[0] - jj[valid][0]).any())
        dx = col + jj[valid] if flipped else col - jj[valid]
        assert (dx == dx[0]).all()
        dx0 = int(dx[0]) - 31 if flipped else int(dx[0])
        assert abs(int(dy[0])) <= 4 and abs(dx0) <= 4
        # the valid region is exactly where the shifted source lies inside the image
        assert int(valid.sum()) == (32 - abs(int(dy[0]))) * (32 - abs(dx0))
        out.append((int(dy[0]), dx0, flipped))
    return out


def test_loader_crop_only_shifts_and_flip_flag():
    x = _pattern(64)
    shifts = [s for xb, _ in _loader(x, batch_size=16, seed=0).epoch(0) for s in _shifts(xb)]
    assert len({(dy, dx) for dy, dx, _ in shifts}) > 10  # many different offsets
    assert 10 < sum(f for *_, f in shifts) < 54  # about half flipped
    no_flip = [s for xb, _ in _loader(x, batch_size=16, hflip=False).epoch(1) for s in _shifts(xb)]
    assert not any(f for *_, f in no_flip)
    flip_only = _loader(x, batch_size=16, crop_padding=0, seed=5)
    fo = [s for xb, _ in flip_only.epoch(0) for s in _shifts(xb)]
    assert all(dy == 0 and dx == 0 for dy, dx, _ in fo) and any(f for *_, f in fo)


def test_loader_options_and_errors():
    x = torch.from_numpy(_images(10, 3))
    xb, _ = next(_loader(x, channels_last=True, dtype=torch.bfloat16).epoch(0))
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="no batch"):
        _loader(x, batch_size=16)  # drop_last in training and fewer images than a batch
    with pytest.raises(ValueError, match="uint8"):
        _loader(x.float())
    with pytest.raises(ValueError, match="mean/std"):
        Loader(x, torch.arange(10), mean=(0.5,), std=(0.5,), batch_size=2, train=False)


def test_loader_from_data_uses_dataset_defaults():
    data = _fake_data(n_train=40, n_test=12)
    train = Loader.from_data(data, "train", batch_size=8)
    test = Loader.from_data(data, split="test", batch_size=5)
    assert train.train and train.hflip and len(train) == 5
    assert not test.train and len(test) == 3
    xb, yb = next(test.epoch(0))
    m = torch.tensor(data.info.mean).view(1, 3, 1, 1)
    s = torch.tensor(data.info.std).view(1, 3, 1, 1)
    assert torch.equal(xb, (data.x_test[:5].float() / 255 - m) / s)
    assert torch.equal(yb, data.y_test[:5])
    svhn = ImageData("svhn", data.x_train, data.y_train, data.x_test, data.y_test,
                     list(DATASETS["svhn"].classes), DATASETS["svhn"], {})  # fmt: skip
    assert not Loader.from_data(svhn, batch_size=8).hflip
    with pytest.raises(ValueError, match="split"):
        Loader.from_data(data, "val", batch_size=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_loader_same_batches_on_cuda():
    x = torch.from_numpy(_images(40, 4))
    cpu, gpu = _loader(x, seed=1), _loader(x, seed=1, device="cuda")
    for (xa, ya), (xb, yb) in zip(cpu.epoch(2), gpu.epoch(2), strict=True):
        assert xb.device.type == "cuda"
        assert torch.equal(ya, yb.cpu())
        torch.testing.assert_close(xa, xb.cpu(), rtol=0, atol=1e-6)
