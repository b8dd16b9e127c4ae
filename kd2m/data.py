"""Datasets -> uint8 tensor cache -> normalised, augmented batches on the device.

Three layers, each small:

1. :data:`DATASETS` -- what is known about SVHN, CIFAR-10 and CIFAR-100 (classes in
   torchvision's label order, per-channel statistics of the training set, the default
   augmentation).
2. :func:`load_data` -- reads a dataset ONCE (torchvision's official files, or an
   image-folder copy / archive of it, or any image folder of one's own: classes from its
   sorted folder names, images converted to RGB and resized, statistics of its training
   split), stores it as one uint8 tensor cache file under ``<root>/cache/`` and returns an
   :class:`ImageData` with a JSON-serialisable ``provenance`` for run records. Later calls
   read the cache. :func:`resolve_source` decides where a dataset comes from (the offline
   copy, torchvision's files, or torchvision's download) and says so in one sentence.
3. :class:`Loader` -- the whole split lives on the training device as one uint8 tensor;
   an epoch is a seeded permutation plus random crop / horizontal flip done with a few
   tensor operations over whole batches (no per-image PIL work), in the style of
   KellerJordan's cifar10-airbench. The randomness of epoch ``e`` depends only on
   ``(seed, e)``, so a resumed run replays exactly the same batches, on any device.

The paper's pipeline (Section 5; the author's code): random crop with zero padding 4,
horizontal flip, per-channel normalisation. Two deliberate differences from that code:
each dataset is normalised with its OWN statistics (the author's code normalised
CIFAR-10 with CIFAR-100's), and SVHN is not flipped by default (a mirrored digit is
often not the same digit, or no digit at all: 2/5, 3, 7, 4...).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tarfile
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kd2m._decode import UnreadableImage, read_chunk
from kd2m._io import FileError, atomic_torch_save, file_sha256, path_lock, read_json, torch_load

__all__ = [
    "CACHE_FORMAT",
    "DATASETS",
    "DataNotFoundError",
    "DataSource",
    "DatasetInfo",
    "ImageData",
    "Loader",
    "channel_stats",
    "folder_name",
    "load_data",
    "resolve_source",
    "stratified_counts",
    "tensor_sha256",
]

#: Bumped whenever the cache layout or the decoding changes (part of the cache key).
CACHE_FORMAT = 1
#: The same, for the caches of image folders of one's own (any classes, sizes and modes).
FOLDER_CACHE_FORMAT = 1
#: The networks' input size: every bundled profile trains on 32x32 images.
DEFAULT_IMAGE_SIZE = 32

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


# --------------------------------------------------------------------------- datasets

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
    "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)  # fmt: skip

#: torchvision's SVHN labels are the digits, with the file's label 10 mapped to digit 0.
SVHN_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before reading it.

    ``mean`` / ``std`` are per-channel (R, G, B) statistics of the TRAINING split in
    [0, 1] scale: mean and standard deviation over all training pixels of the channel
    (population std, not the mean of per-image stds). ``classes`` is torchvision's label
    order (label i = ``classes[i]``); it is also the sorted order, so an image-folder
    copy's sorted class folders must equal it. ``hflip`` is the default for the
    horizontal-flip augmentation.
    """

    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hflip: bool
    torchvision_class: str  # "" for an image folder of one's own
    classes: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes"
            )


DATASETS: dict[str, DatasetInfo] = {
    # CIFAR-10 training set (50,000 official images); checked against the offline JPEG
    # copy in tests/test_data.py.
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        mean=(0.4913996458, 0.4821584022, 0.4465309185),
        std=(0.2470322324, 0.2434851280, 0.2615878417),
        hflip=True,
        torchvision_class="CIFAR10",
        classes=CIFAR10_CLASSES,
    ),
    # CIFAR-100 training set (50,000 images).
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        mean=(0.5070751592, 0.4865488733, 0.4409178434),
        std=(0.2673342859, 0.2564384629, 0.2761504713),
        hflip=True,
        torchvision_class="CIFAR100",
        classes=CIFAR100_CLASSES,
    ),
    # SVHN 'train' split (73,257 images; the 'extra' split is not used).
    # hflip=False: a mirrored digit is often another digit or none (2<->5-like shapes,
    # 3, 4, 7), so flipping is a doubtful label-preserving augmentation for digits.
    "svhn": DatasetInfo(
        name="svhn",
        num_classes=10,
        mean=(0.4376821, 0.4437697, 0.47280442),
        std=(0.19803012, 0.20101562, 0.19703614),
        hflip=False,
        torchvision_class="SVHN",
        classes=SVHN_CLASSES,
    ),
}


class DataNotFoundError(FileNotFoundError, RuntimeError):
    """The dataset's files are not where they were looked for (or could not be fetched).

    Subclasses both :class:`FileNotFoundError` and :class:`RuntimeError`.
    """


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}; for images of "
            f"your own pass folder=PATH (an image-folder tree PATH/train/<class>/*, "
            f"PATH/test/<class>/* or a .tar.gz of one)"
        )
    return DATASETS[name]


def folder_name(folder: str | os.PathLike) -> str:
    """The dataset name of an image folder of one's own: its file name without the
    archive suffix, lower-cased, other characters than ``a-z0-9_.-`` replaced by ``-``
    (``~/My Digits.tar.gz`` -> ``my-digits``). A name equal to a known dataset's gets
    ``-folder`` appended, so that it never takes that dataset's official statistics."""
    base = Path(folder).expanduser().resolve().name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    slug = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.-") else "-" for ch in base)
    slug = slug.strip("-.") or "folder"
    return f"{slug}-folder" if slug in DATASETS else slug


# --------------------------------------------------------------------------- helpers


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """sha256 over the dtype, shape and raw bytes of each tensor, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std in [0, 1] scale of uint8 images (N, C, H, W).

    Exact: computed in float64 from each channel's 256-bin histogram. This is how
    ``DATASETS``'s numbers are defined (all pixels of the training split).
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        m = (p * levels).sum()
        means.append(float(m))
        stds.append(float((p * (levels - m) ** 2).sum().sqrt()))
    return tuple(means), tuple(stds)


def _short_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- ImageData


@dataclass
class ImageData:
    """A whole dataset in memory: uint8 images (N, 3, S, S) and int64 labels (N,); S = 32
    for the known datasets, the requested ``image_size`` for a folder of one's own.

    ``provenance`` is JSON-serialisable and meant to go verbatim into a run record:
    source ("torchvision" or "folder"), the path read, the cache file and its sha256,
    ``content_sha256`` (over the four tensors, independent of the file format), image
    counts, the normalisation statistics (``mean``, ``std``, ``stats``: "official" or
    "train split"), and, after :meth:`subset`, how the subset was drawn.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    info: DatasetInfo
    provenance: dict

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def subset(
        self, n_train: int | None = None, n_test: int | None = None, seed: int = 0
    ) -> ImageData:
        """A seeded, stratified subset: ``n_train`` / ``n_test`` images (None: all).

        Each class gets a share proportional to its frequency in the split (largest
        remainder rounding; exactly n/K per class on the balanced CIFARs; SVHN keeps its
        class imbalance, so accuracies on a test subset estimate full-test accuracy).
        Within a class the images are drawn by a ``torch.Generator`` seeded with
        ``seed``; the subset keeps the original order of the split.
        """
        g = torch.Generator().manual_seed(int(seed))
        itr = _stratified_indices(
            self.y_train,
            n_train,
            self.num_classes,
            g,
            "n_train",
            f"{self.name} has {len(self.y_train)} training images",
        )
        ite = _stratified_indices(
            self.y_test,
            n_test,
            self.num_classes,
            g,
            "n_test",
            f"{self.name} has {len(self.y_test)} test images",
        )
        info = {"n_train": int(len(itr)), "n_test": int(len(ite)), "seed": int(seed)}
        return self._split(itr, self.x_test[ite], self.y_test[ite], info)

    def _split(self, itr, x_test, y_test, info: dict) -> ImageData:
        """These data with the training images ``itr`` and the test split ``x_test``,
        ``y_test``; ``info`` goes into the provenance's ``subset`` (with the parent's
        content hash), and the content hash is that of the new splits."""
        x_train, y_train = self.x_train[itr], self.y_train[itr]
        prov = dict(self.provenance)
        prov["subset"] = info | {
            "stratified": "proportional",
            "parent_content_sha256": self.provenance.get("content_sha256"),
            "parent_subset": self.provenance.get("subset"),
        }
        prov["n_train"], prov["n_test"] = int(len(itr)), int(len(y_test))
        prov["content_sha256"] = tensor_sha256(x_train, y_train, x_test, y_test)
        return replace(
            self,
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            classes=list(self.classes),
            provenance=prov,
        )

    def validation(self, n_train: int | None, n_val: int, seed: int = 0) -> ImageData:
        """The training images of :meth:`subset` ``(n_train, seed=seed)`` (the same images,
        in the same order) with ``n_val`` other training images, stratified and drawn from
        those the subset left out, in place of the test split: for choosing a
        hyperparameter without looking at the test images. Raises ValueError when fewer
        than ``n_val`` training images are left out."""
        g = torch.Generator().manual_seed(int(seed))
        has = f"{self.name} has {len(self.y_train)} training images"
        itr = _stratified_indices(self.y_train, n_train, self.num_classes, g, "n_train", has)
        rest = torch.ones(len(self.y_train), dtype=torch.bool)
        rest[itr] = False
        pool = torch.nonzero(rest).flatten()
        left = f"{len(pool)} training images are left out of n_train={n_train}"
        g_val = torch.Generator().manual_seed(int(seed) + 1)
        iva = pool[
            _stratified_indices(self.y_train[pool], n_val, self.num_classes, g_val, "n_val", left)
        ]
        info = {
            "n_train": int(len(itr)),
            "n_val": int(len(iva)),
            "seed": int(seed),
            "evaluated_on": "validation: training images outside the training subset",
        }
        return self._split(itr, self.x_train[iva], self.y_train[iva], info)


def stratified_counts(counts, n: int) -> torch.Tensor:
    """How many of ``n`` draws each class gets when classes of sizes ``counts`` share them in
    proportion: ``floor(counts * n / total)``, then one more for the largest remainders
    (ties broken by class index). int64 tensor summing to ``n``."""
    counts = torch.as_tensor(counts).to(torch.float64)
    quota = counts * n / counts.sum()
    take = quota.floor().to(torch.int64)
    rest = n - int(take.sum())
    if rest:
        # largest remainder; ties broken by class index (stable sort)
        order = torch.sort(quota - take, descending=True, stable=True).indices
        take[order[:rest]] += 1
    return take


def _stratified_indices(
    y: torch.Tensor,
    n: int | None,
    num_classes: int,
    g: torch.Generator,
    what: str,
    has: str = "",
) -> torch.Tensor:
    total = len(y)
    if n is None:
        return torch.arange(total)
    n = int(n)
    if n > total:
        raise ValueError(
            f"{what}={n} asks for more images than there are: {has or f'the split has {total}'}."
            f" Ask for at most {total} ({what}={total}, e.g. --set {what}={total}) or for all "
            f"of them ({what}=None, --set {what}=null)"
        )
    if n < 1:
        raise ValueError(f"{what}={n} must be in [1, {total}] (the split has {total} images)")
    take = stratified_counts(torch.bincount(y, minlength=num_classes), n)
    parts = []
    for c in range(num_classes):
        k = int(take[c])
        idx = torch.nonzero(y == c).flatten()
        perm = torch.randperm(len(idx), generator=g)
        if k:
            parts.append(idx[perm[:k]])
    return torch.sort(torch.cat(parts)).values


# --------------------------------------------------------------------------- loading


def load_data(
    name: str | None = None,
    *,
    source: str = "auto",
    root: str | os.PathLike = "data",
    folder: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> ImageData:
    """Read dataset ``name`` ("cifar10", "cifar100", "svhn") or an image folder of one's
    own (``name`` None or any other name, with ``folder=``), through a uint8 cache.

    Sources:

    - ``"torchvision"``: the official files as ``torchvision.datasets.CIFAR10`` /
      ``CIFAR100`` / ``SVHN`` read them, from ``<root>/<name>/`` (``download=True``
      fetches them there). SVHN uses the 'train' and 'test' splits.
    - ``"folder"``: an image-folder copy ``<folder>/train/<class>/*`` and
      ``<folder>/test/<class>/*``; ``folder`` may also be a ``.tar.gz`` (or .tgz/.tar)
      archive of such a tree (possibly under one top-level directory), which is
      extracted once into ``<root>/<name>-folder/``. Labels are the indices of the
      sorted class folder names, which must equal torchvision's class list.
    - ``"auto"``: ``"folder"`` if ``folder`` is given, else ``"torchvision"``.

    Any other image folder (``name`` None: named by :func:`folder_name`, or a name that
    is not a known dataset's) has the same layout (``PATH/train/<class>/*``,
    ``PATH/test/<class>/*``, or one subfolder holding them, or an archive of either):
    the classes are its sorted folder names (the same in train/ and test/), the images
    may have any size and mode (L, P, RGBA, RGB, 16-bit, ...): each is converted to RGB
    as torchvision's ``ImageFolder`` does (alpha dropped) and resized to ``image_size``
    x ``image_size`` (PIL bilinear with antialiasing; the aspect ratio is not kept).
    The per-channel mean and std of its training split (:func:`channel_stats`) are its
    normalisation, stored in the cache and in ``provenance``; its default augmentation
    flips horizontally (``RunConfig.hflip=False``, ``--set hflip=false``, for digits or
    text). Decoding runs on all cores, with a progress bar on large folders
    (``KD2M_PROGRESS=0`` turns it off).

    The first call decodes the images into ``<root>/cache/<name>-<source>-<key>.pt``
    (written atomically); ``key`` identifies the input (torchvision's file checksums, or
    the archive's sha256 / the folder's file listing), so changed inputs are re-decoded.
    Every read of the cache checks its content sha256 and label range; a cache that fails
    (or cannot be read) is deleted and rebuilt, with a warning naming it. Reading and
    building hold ``<root>/cache/.<name>.lock``, so concurrent processes decode once.
    A broken image, archive or cache write raises :class:`kd2m._io.FileError` naming the
    file.

    Cost, measured on the offline CIFAR-10 JPEG archive (60,000 files, 2 shared CPU
    cores): extraction ~8.5 s, decoding with PIL in one process ~9 s, later calls read
    the 185 MB cache in ~0.25 s (~1.3 s for a folder source, which re-lists its files).

    Raises :class:`DataNotFoundError` when the files are missing (saying where they were
    looked for and how to provide them), ``ValueError`` on a bad name/source or a class
    list that does not match the dataset.
    """
    if source not in ("auto", "torchvision", "folder"):
        raise ValueError(f"unknown source {source!r}; expected 'auto', 'torchvision' or 'folder'")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}: expected a positive integer")
    root = Path(root)
    if name is None or (name not in DATASETS and folder is not None and source != "torchvision"):
        if folder is None or source == "torchvision":
            raise ValueError(
                f"load_data(source={source!r}) needs a known dataset name {sorted(DATASETS)}"
                f" or folder=PATH (source 'auto' or 'folder')"
            )
        own = name or folder_name(folder)
        return _load_checked(
            root, own, lambda: _load_image_folder(own, root, Path(folder), image_size)
        )
    if image_size != DEFAULT_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size}: {name}'s images are {DEFAULT_IMAGE_SIZE}x"
            f"{DEFAULT_IMAGE_SIZE} and are not resized; image_size applies to image folders "
            "of one's own"
        )
    return _load_known(_info(name), source, root, folder, download)


def _load_known(info: DatasetInfo, source: str, root: Path, folder, download: bool) -> ImageData:
    """A known dataset from torchvision's files or from an image-folder copy of it."""
    if source == "auto":
        source = "folder" if folder is not None else "torchvision"
    if source == "torchvision":
        if folder is not None:
            raise ValueError("folder= is only used with source='folder' (or 'auto')")
        return _official_stats(
            _load_checked(root, info.name, lambda: _load_torchvision(info, root, download))
        )
    if folder is None:
        raise ValueError("source='folder' needs folder= (an image-folder tree or archive)")
    return _official_stats(
        _load_checked(root, info.name, lambda: _load_folder(info, root, Path(folder)))
    )


def _official_stats(data: ImageData) -> ImageData:
    """A known dataset is normalised with its official statistics: say so in provenance."""
    data.provenance.update(mean=list(data.info.mean), std=list(data.info.std), stats="official")
    return data


class _BadCache(Exception):
    """A cache file that cannot be read or fails its checks (it is rebuilt)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _load_checked(root: Path, name: str, load) -> ImageData:
    """``load()`` under the data root's lock for this dataset (concurrent processes decode
    and write a cache once; the others wait, then read it). A cache that fails its checks
    is deleted, with a warning naming it, and built again."""
    with path_lock(root / "cache" / f".{name}.lock", f"reading {name}"):
        try:
            return load()
        except _BadCache as bad:
            warnings.warn(
                f"data cache {bad.path} is corrupt ({bad.reason}): deleting it and "
                "rebuilding it from the source",
                stacklevel=3,
            )
            bad.path.unlink(missing_ok=True)
        try:
            return load()
        except _BadCache as bad:
            raise FileError(
                bad.path,
                f"the data cache {bad.path} rebuilt from the source is "
                f"still corrupt ({bad.reason}): check the disk, delete "
                f"{bad.path.parent} and rerun",
            ) from None


def _check_cache(info: DatasetInfo, cache: Path, blob, fmt: int = CACHE_FORMAT) -> None:
    """Raise :class:`_BadCache` unless ``blob`` is a kd2m cache of ``info`` whose tensors
    match their stored content hash and whose labels lie in ``[0, num_classes)``."""
    keys = ("x_train", "y_train", "x_test", "y_test", "classes", "provenance")
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        raise _BadCache(cache, "not a kd2m data cache")
    if blob.get("format") != fmt or blob.get("name") != info.name:
        raise _BadCache(cache, f"not a format-{fmt} cache of {info.name}")
    for split in ("train", "test"):
        x, y = blob[f"x_{split}"], blob[f"y_{split}"]
        if x.dtype != torch.uint8 or x.dim() != 4 or y.shape != (x.shape[0],):
            raise _BadCache(cache, f"{split} tensors of the wrong type or shape")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise _BadCache(cache, f"{split} labels outside [0, {info.num_classes})")
    stored = blob["provenance"].get("content_sha256")
    actual = tensor_sha256(blob["x_train"], blob["y_train"], blob["x_test"], blob["y_test"])
    if stored != actual:
        raise _BadCache(
            cache, f"content sha256 {actual[:12]} differs from the stored {str(stored)[:12]}"
        )


def _from_cache(info: DatasetInfo | str, cache: Path, prov: dict) -> ImageData:
    """Read and verify a cache (:func:`_check_cache`); ``info`` is a known dataset's, or the
    name of an image folder of one's own (whose classes and statistics the cache holds)."""
    t0 = time.perf_counter()
    try:
        blob = torch_load(cache, "", map_location="cpu", weights_only=True)
    except FileError as exc:
        raise _BadCache(cache, "unreadable: truncated or not a torch file") from exc
    fmt = CACHE_FORMAT
    if isinstance(info, str):
        try:
            fmt, info = FOLDER_CACHE_FORMAT, _folder_info(info, blob)
        except Exception as exc:
            raise _BadCache(cache, f"not a kd2m image-folder cache ({exc})") from exc
    _check_cache(info, cache, blob, fmt)
    prov = {
        **prov,
        **blob["provenance"],
        "cache_file": str(cache),
        "cache_sha256": file_sha256(cache),
        "cache_load_seconds": round(time.perf_counter() - t0, 3),
    }
    return ImageData(
        name=info.name,
        x_train=blob["x_train"],
        y_train=blob["y_train"],
        x_test=blob["x_test"],
        y_test=blob["y_test"],
        classes=list(blob["classes"]),
        info=info,
        provenance=prov,
    )


def _write_cache(
    info: DatasetInfo,
    cache: Path,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    classes: Sequence[str],
    prov: dict,
    image_size: int = DEFAULT_IMAGE_SIZE,
    fmt: int = CACHE_FORMAT,
) -> None:
    s = image_size
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(
                f"{info.name} {split}: expected uint8 (N, 3, {s}, {s}), got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        if y.shape != (x.shape[0],) or int(y.min()) < 0 or int(y.max()) >= info.num_classes:
            raise ValueError(f"{info.name} {split}: labels must be (N,) in [0, {info.num_classes})")
    prov = {
        **prov,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "content_sha256": tensor_sha256(x_train, y_train, x_test, y_test),
    }
    blob = {
        "format": fmt,
        "name": info.name,
        "x_train": x_train.contiguous(),
        "y_train": y_train.to(torch.int64).contiguous(),
        "x_test": x_test.contiguous(),
        "y_test": y_test.to(torch.int64).contiguous(),
        "classes": list(classes),
        "provenance": prov,
    }
    atomic_torch_save(blob, cache)


# ---- torchvision


def _torchvision_files(info: DatasetInfo) -> list[list[str]]:
    """[file name, md5] pairs torchvision checks for this dataset (read at call time)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.torchvision_class)
    if info.torchvision_class == "SVHN":
        return [[cls.split_list[s][1], cls.split_list[s][2]] for s in ("train", "test")]
    files = [list(p) for p in cls.train_list + cls.test_list]
    return files + [[cls.meta["filename"], cls.meta["md5"]]]


def _how_to_provide(info: DatasetInfo, where: Path) -> str:
    return (
        f"Provide the data in one of these ways: (1) load_data({info.name!r}, "
        f"download=True) downloads the official files into {where} (needs internet); "
        f"(2) copy the official files there yourself (torchvision.datasets."
        f"{info.torchvision_class} layout); (3) load_data({info.name!r}, folder=PATH) with "
        f"an image-folder copy PATH/train/<class>/*, PATH/test/<class>/* or a .tar.gz "
        f"archive of one."
    )


def _load_torchvision(info: DatasetInfo, root: Path, download: bool) -> ImageData:
    import torchvision
    import torchvision.datasets as tvd

    where = root / info.name
    files = _torchvision_files(info)
    key = _short_key({"format": CACHE_FORMAT, "cls": info.torchvision_class, "files": files})
    cache = root / "cache" / f"{info.name}-torchvision-{key}.pt"
    prov: dict = {"dataset": info.name, "source": "torchvision", "path": str(where.resolve())}
    if cache.exists():
        return _from_cache(info, cache, prov)

    cls = getattr(tvd, info.torchvision_class)
    t0 = time.perf_counter()
    splits = []
    try:
        for train in (True, False):
            if info.torchvision_class == "SVHN":
                ds = cls(root=str(where), split="train" if train else "test", download=download)
                x = torch.from_numpy(np.ascontiguousarray(ds.data))  # already (N, 3, H, W)
                y = torch.as_tensor(ds.labels, dtype=torch.int64)
                classes = list(SVHN_CLASSES)
            else:
                ds = cls(root=str(where), train=train, download=download)
                x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
                y = torch.as_tensor(ds.targets, dtype=torch.int64)
                classes = list(ds.classes)
            splits.append((x.contiguous(), y))
    except RuntimeError as e:
        expected = ", ".join(f for f, _ in files)
        if download:
            msg = f"downloading {info.name} into {where} failed ({e})."
        else:
            msg = (
                f"{info.name} not found (or corrupted) in {where.resolve()}: "
                f"torchvision looked there for {expected}."
            )
        raise DataNotFoundError(f"{msg} {_how_to_provide(info, where)}") from e
    except OSError as e:  # network errors during download (URLError is an OSError)
        what = "downloading" if download else "reading"
        raise DataNotFoundError(
            f"{what} {info.name} in {where} failed ({e!r}). {_how_to_provide(info, where)}"
        ) from e
    if classes != list(info.classes):
        raise ValueError(
            f"{info.name}: torchvision classes {classes} differ from the expected "
            f"{list(info.classes)}"
        )
    (x_train, y_train), (x_test, y_test) = splits
    prov = {
        **prov,
        "files": files,
        "torchvision_version": torchvision.__version__,
        "decode_seconds": round(time.perf_counter() - t0, 3),
    }
    _write_cache(info, cache, x_train, y_train, x_test, y_test, classes, prov)
    return _from_cache(info, cache, {})


# ---- image folder


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _layout_root(base: Path) -> Path | None:
    """``base`` if it holds train/ and test/, else its single subdirectory that does."""
    if (base / "train").is_dir() and (base / "test").is_dir():
        return base
    subdirs = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    return None


_MARKER = ".kd2m-extracted.json"


def _extract_once(archive: Path, target: Path, archive_sha: str) -> None:
    """Extract ``archive`` into ``target`` unless already done from the same archive."""
    marker = target / _MARKER
    if marker.is_file():
        done = read_json(marker, f"delete {target} and rerun (it is extracted again)")
        if done.get("archive_sha256") == archive_sha:
            return
        shutil.rmtree(target)  # ours (it has our marker), from another archive
    elif target.exists():
        raise FileExistsError(
            f"{target} exists but was not extracted by kd2m from {archive}; remove it or "
            f"pass folder={target} instead of the archive"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _extract(archive, tmp)
        (tmp / _MARKER).write_text(
            json.dumps({"archive": str(archive), "archive_sha256": archive_sha})
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same extraction first
            if not (
                marker.is_file()
                and json.loads(marker.read_text()).get("archive_sha256") == archive_sha
            ):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _extract(archive: Path, tmp: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        raise FileError(
            archive,
            f"cannot extract {archive} ({why}): it is not a complete "
            f"tar archive ({', '.join(ARCHIVE_SUFFIXES)}); copy it again, or pass "
            "the extracted image folder instead",
        ) from exc


def _read_image(path: Path) -> np.ndarray:
    """The RGB pixels of one image file; a truncated or unreadable file raises
    :class:`FileError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for broken files
        raise FileError(
            path, f"cannot decode image {path} ({exc}): replace or delete the file and rerun"
        ) from exc


def _abbrev(names: Sequence[str], k: int = 10) -> str:
    return str(list(names[:k]))[:-1] + (", ...]" if len(names) > k else "]")


def _list_split(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    classes = sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    files = [
        sorted(
            p
            for p in (split_dir / c).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        for c in classes
    ]
    return classes, files


def _progress_on() -> bool:
    return os.environ.get("KD2M_PROGRESS", "1") not in ("0", "false", "no")


#: Folders with at least this many images are decoded by a process pool, with a progress
#: bar; below it, starting the workers costs more than it saves.
PARALLEL_MIN_IMAGES = 2000
DECODE_CHUNK = 256


def _decode_pool(workers: int):
    """A pool of ``workers``: forked processes on Linux (the children only run numpy and
    PIL; forking spares them re-importing torch and the caller's ``__main__``), threads
    elsewhere (PIL releases the GIL while decoding)."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def _decode(
    files: list[list[Path]],
    size: int = DEFAULT_IMAGE_SIZE,
    resize: bool = False,
    desc: str = "decoding",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_decode_all`, with an unreadable image reported as a FileError naming it."""
    try:
        return _decode_all(files, size, resize, desc)
    except UnreadableImage as exc:
        raise FileError(exc.path, str(exc)) from exc


def _decode_all(
    files: list[list[Path]],
    size: int = DEFAULT_IMAGE_SIZE,
    resize: bool = False,
    desc: str = "decoding",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, size, size) uint8 and labels (N,) of ``files[label]``, in order.

    Large folders (at least :data:`PARALLEL_MIN_IMAGES` images) are decoded in chunks by
    ``os.cpu_count()`` workers (:func:`_decode_pool`), with a progress bar; small ones in
    this process."""
    from tqdm import tqdm

    paths = [str(p) for fs in files for p in fs]
    n = len(paths)
    x = np.empty((n, size, size, 3), dtype=np.uint8)
    y = np.repeat(np.arange(len(files), dtype=np.int64), [len(f) for f in files])
    chunks = [(s, min(n, s + DECODE_CHUNK)) for s in range(0, n, DECODE_CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks)) if n >= PARALLEL_MIN_IMAGES else 1

    def put(s: int, e: int, raw: bytes) -> None:
        x[s:e] = np.frombuffer(raw, np.uint8).reshape(e - s, size, size, 3)
        bar.update(e - s)

    with tqdm(
        total=n,
        desc=desc,
        unit="img",
        leave=False,
        disable=not _progress_on() or n < PARALLEL_MIN_IMAGES,
    ) as bar:
        if workers <= 1:
            for s, e in chunks:
                put(s, e, read_chunk(paths[s:e], size, resize))
        else:
            with warnings.catch_warnings(), _decode_pool(workers) as pool:
                # Python >= 3.12 warns on any fork of a process with threads (torch's)
                warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
                jobs = [pool.submit(read_chunk, paths[s:e], size, resize) for s, e in chunks]
                try:
                    for (s, e), job in zip(chunks, jobs, strict=True):
                        put(s, e, job.result())
                except BaseException:
                    for job in jobs:
                        job.cancel()
                    raise
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)


def _not_a_tree(folder: Path) -> ValueError:
    return ValueError(
        f"folder={str(folder)!r} is neither a directory nor an archive "
        f"({', '.join(ARCHIVE_SUFFIXES)})"
    )


def _tree_base(name: str, tree: Path) -> Path:
    """The folder of ``tree`` that holds train/ and test/ (itself or its single subfolder)."""
    base = _layout_root(tree)
    if base is None:
        raise DataNotFoundError(
            f"{name}: no train/ and test/ folders in {tree.resolve()} (nor in a single "
            f"subfolder of it). Expected {_LAYOUT}."
        )
    return base


def _load_folder(info: DatasetInfo, root: Path, folder: Path) -> ImageData:
    if not folder.exists():
        raise DataNotFoundError(
            f"{info.name}: folder={str(folder)!r} does not exist (resolved: {folder.resolve()})."
            f" Expected an image-folder tree PATH/train/<class>/*, PATH/test/<class>/* or a "
            f".tar.gz archive of one. {_how_to_provide(info, root / info.name)}"
        )
    prov: dict = {"dataset": info.name, "source": "folder"}
    if _is_archive(folder):
        archive_sha = file_sha256(folder)
        prov.update(archive=str(folder.resolve()), archive_sha256=archive_sha)
        key = _short_key({"format": CACHE_FORMAT, "archive_sha256": archive_sha})
        cache = root / "cache" / f"{info.name}-folder-{key}.pt"
        tree = root / f"{info.name}-folder"
        if cache.exists():  # no need to (re-)extract
            return _from_cache(info, cache, {**prov, "path": str(tree.resolve())})
        t0 = time.perf_counter()
        _extract_once(folder.resolve(), tree, archive_sha)
        prov["extract_seconds"] = round(time.perf_counter() - t0, 3)
    elif folder.is_dir():
        tree, key = folder, None
    else:
        raise _not_a_tree(folder)
    base = _tree_base(info.name, tree)
    prov["path"] = str(base.resolve())
    t0 = time.perf_counter()
    (train_classes, train_files), (test_classes, test_files) = (
        _list_split(base / "train"),
        _list_split(base / "test"),
    )
    expected = list(info.classes)
    for split, classes in (("train", train_classes), ("test", test_classes)):
        if classes != expected:
            missing = sorted(set(expected) - set(classes))
            extra = sorted(set(classes) - set(expected))
            raise ValueError(
                f"{info.name}: the class folders of {base / split} do not match torchvision's "
                f"classes of {info.name} (missing: {missing[:10]}, unexpected: {extra[:10]}); "
                f"sorted folder names must equal {_abbrev(expected)}"
            )
    if key is None:  # a directory: key on its listing (names, sizes, mtimes)
        listing = [
            [str(p.relative_to(base)), st.st_size, st.st_mtime_ns]
            for p in (q for fs in train_files + test_files for q in fs)
            for st in (p.stat(),)
        ]
        key = _short_key({"format": CACHE_FORMAT, "path": str(base.resolve()), "listing": listing})
        cache = root / "cache" / f"{info.name}-folder-{key}.pt"
        if cache.exists():
            return _from_cache(info, cache, prov)
    for split, files in (("train", train_files), ("test", test_files)):
        empty = [c for c, f in zip(expected, files, strict=True) if not f]
        if empty:
            raise ValueError(f"{info.name}: no images in {base / split} for classes {empty[:10]}")
    x_train, y_train = _decode(train_files)
    x_test, y_test = _decode(test_files)
    prov["decode_seconds"] = round(time.perf_counter() - t0, 3)
    _write_cache(info, cache, x_train, y_train, x_test, y_test, expected, prov)
    return _from_cache(info, cache, {})


# ---- image folder of one's own


_LAYOUT = (
    "an image-folder tree PATH/train/<class>/*, PATH/test/<class>/* (or one subfolder "
    "of PATH holding train/ and test/), or a .tar.gz archive of one"
)


def _folder_info(name: str, blob: dict) -> DatasetInfo:
    """The :class:`DatasetInfo` of an image folder of one's own, from its cache blob."""
    if blob.get("format") != FOLDER_CACHE_FORMAT or "mean" not in blob.get("provenance", {}):
        raise ValueError(f"not a kd2m image-folder cache of {name} (format {FOLDER_CACHE_FORMAT})")
    prov, classes = blob["provenance"], tuple(blob["classes"])
    return DatasetInfo(
        name=name,
        num_classes=len(classes),
        mean=tuple(prov["mean"]),
        std=tuple(prov["std"]),
        hflip=True,
        torchvision_class="",
        classes=classes,
    )


def _folder_classes(base: Path) -> tuple[list[str], list[list[Path]], list[list[Path]]]:
    """Sorted class names (the same in train/ and test/) and each split's files."""
    (train_classes, train_files), (test_classes, test_files) = (
        _list_split(base / "train"),
        _list_split(base / "test"),
    )
    if train_classes != test_classes:
        raise ValueError(
            f"the class folders of {base / 'train'} and {base / 'test'} differ (only in "
            f"train/: {sorted(set(train_classes) - set(test_classes))[:10]}, only in test/: "
            f"{sorted(set(test_classes) - set(train_classes))[:10]}); both need the same "
            "class folders"
        )
    if len(train_classes) < 2:
        raise ValueError(
            f"{base / 'train'} has {len(train_classes)} class folder(s) "
            f"{train_classes}; a classifier needs at least 2 (train/<class>/*)"
        )
    for split, files in (("train", train_files), ("test", test_files)):
        empty = [c for c, f in zip(train_classes, files, strict=True) if not f]
        if empty:
            raise ValueError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {base / split} for classes "
                f"{_abbrev(empty)}"
            )
    return train_classes, train_files, test_files


def _load_image_folder(name: str, root: Path, folder: Path, image_size: int) -> ImageData:
    """Any image-folder tree (or archive of one): classes = sorted folder names, images
    converted to RGB and resized, statistics of the training split."""
    if not folder.exists():
        raise DataNotFoundError(
            f"{name}: folder={str(folder)!r} does not exist (resolved: {folder.resolve()}). "
            f"Expected {_LAYOUT}."
        )
    prov: dict = {"dataset": name, "source": "folder", "image_size": image_size}
    ident = {"format": FOLDER_CACHE_FORMAT, "kind": "image-folder", "image_size": image_size}
    if _is_archive(folder):
        archive_sha = file_sha256(folder)
        prov.update(archive=str(folder.resolve()), archive_sha256=archive_sha)
        cache = root / "cache" / f"{name}-folder-{_short_key(ident | {'archive': archive_sha})}.pt"
        tree = root / f"{name}-folder"
        if cache.exists():  # no need to (re-)extract
            return _from_cache(name, cache, prov)
        t0 = time.perf_counter()
        _extract_once(folder.resolve(), tree, archive_sha)
        prov["extract_seconds"] = round(time.perf_counter() - t0, 3)
        cache_of_listing = False
    elif folder.is_dir():
        tree, cache_of_listing = folder, True
    else:
        raise _not_a_tree(folder)
    base = _tree_base(name, tree)
    prov["path"] = str(base.resolve())
    t0 = time.perf_counter()
    classes, train_files, test_files = _folder_classes(base)
    if cache_of_listing:  # a directory: key on its listing (names, sizes, mtimes)
        listing = [
            [str(p.relative_to(base)), st.st_size, st.st_mtime_ns]
            for p in (q for fs in train_files + test_files for q in fs)
            for st in (p.stat(),)
        ]
        key = _short_key(ident | {"path": str(base.resolve()), "listing": listing})
        cache = root / "cache" / f"{name}-folder-{key}.pt"
        if cache.exists():
            return _from_cache(name, cache, prov)
    # both splits in one pass (one pool, one progress bar); labels: class index = i % K
    x, y = _decode(train_files + test_files, image_size, resize=True, desc=f"decoding {name}")
    n_train, k = sum(len(f) for f in train_files), len(classes)
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train] % k, x[n_train:], y[n_train:] % k
    prov["decode_seconds"] = round(time.perf_counter() - t0, 3)
    mean, std = channel_stats(x_train)
    # a channel constant over the whole training split (std 0) is left unscaled
    std = tuple(v if v > 0 else 1.0 for v in std)
    prov.update(mean=list(mean), std=list(std), stats="train split")
    info = DatasetInfo(
        name=name,
        num_classes=len(classes),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        hflip=True,
        torchvision_class="",
        classes=tuple(classes),
    )
    _write_cache(
        info,
        cache,
        x_train,
        y_train,
        x_test,
        y_test,
        classes,
        prov,
        image_size=image_size,
        fmt=FOLDER_CACHE_FORMAT,
    )
    return _from_cache(name, cache, {})


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's images come from, as :func:`resolve_source` decided.

    ``source``, ``folder`` and ``download`` are the arguments of :func:`load_data` and
    :func:`kd2m.runs.run` (:meth:`args`); ``description`` says in one sentence which data
    is used (the notebooks print it)."""

    dataset: str
    source: str
    folder: str | None
    download: bool
    description: str

    def args(self) -> dict:
        return {"source": self.source, "folder": self.folder, "download": self.download}


def _download_flag(download) -> str:
    if download is True or download is False:
        return {True: "true", False: "false"}[download]
    if isinstance(download, str) and download.lower() in ("auto", "true", "false"):
        return download.lower()
    raise ValueError(f"download={download!r}: expected 'auto', True or False")


def _torchvision_present(info: DatasetInfo, root: Path) -> bool:
    """The decoded cache of torchvision's files, or the files themselves, are under root."""
    import torchvision.datasets as tvd

    key = _short_key(
        {"format": CACHE_FORMAT, "cls": info.torchvision_class, "files": _torchvision_files(info)}
    )
    if (root / "cache" / f"{info.name}-torchvision-{key}.pt").exists():
        return True
    base = root / info.name / getattr(getattr(tvd, info.torchvision_class), "base_folder", "")
    return all((base / f).is_file() for f, _ in _torchvision_files(info))


def resolve_source(
    dataset: str,
    folder: str | os.PathLike | None = None,
    download: bool | str = "auto",
    root: str | os.PathLike | None = None,
) -> DataSource:
    """Which copy of ``dataset`` to read, in this order:

    1. ``folder`` (an image-folder tree or archive, e.g. the offline CIFAR-10 copy) when it
       exists;
    2. torchvision's official files already under ``<root>/<dataset>/`` (or their cache);
    3. with ``download`` "auto" or True: torchvision's download, done here, once, into
       ``<root>/<dataset>/`` (and decoded into the cache).

    Otherwise (``download=False``, or the download failed: no network) it raises ONE
    :class:`DataNotFoundError` that names both ways out: put the copy at ``folder``, or
    allow the download. ``root`` defaults to :func:`kd2m.runs.data_root` (where
    :func:`kd2m.runs.run` reads). A dataset of one's own (not in :data:`DATASETS`) has
    only its folder.
    """
    flag = _download_flag(download)
    if root is None:
        from kd2m.runs import data_root

        root = data_root()
    root = Path(root)
    if folder is not None and Path(folder).exists():
        return DataSource(
            dataset,
            "folder",
            str(folder),
            False,
            f"{dataset}: the image-folder copy {Path(folder).resolve()}",
        )
    if dataset not in DATASETS:
        if folder is None:
            _info(dataset)  # raises: unknown dataset, pass folder=
            raise ValueError(f"{dataset}: not a known dataset; pass folder=")
        raise DataNotFoundError(
            f"{dataset}: folder={str(folder)!r} does not exist (resolved: "
            f"{Path(folder).resolve()}). Expected {_LAYOUT}."
        )
    info = DATASETS[dataset]
    where = (root / dataset).resolve()
    if _torchvision_present(info, root):
        return DataSource(
            dataset,
            "torchvision",
            None,
            False,
            f"{dataset}: torchvision's official files in {where}",
        )
    failure = ""
    if flag != "false":
        try:
            load_data(dataset, source="torchvision", root=root, download=True)
        except DataNotFoundError as e:
            failure = f" Downloading them failed: {e.__cause__ or e!s}."
        else:
            return DataSource(
                dataset,
                "torchvision",
                None,
                False,
                f"{dataset}: torchvision's official files, downloaded now into {where}",
            )
    raise DataNotFoundError(_no_data_message(dataset, folder, where, flag != "false", failure))


def _no_data_message(
    dataset: str, folder, where: Path, download_allowed: bool, failure: str
) -> str:
    """The one message of :func:`resolve_source` when there is no data: both ways out."""
    copy = (
        f"the copy at {Path(folder).resolve()} is absent"
        if folder is not None
        else "no offline copy was named"
    )
    put = (
        f"put the copy at {Path(folder).resolve()} ({_LAYOUT})"
        if folder is not None
        else f"name an offline copy ({_LAYOUT}): folders={{{dataset!r}: PATH}} in the book's "
        "parameters, --folder PATH on the command line, folder=PATH in the API"
    )
    allow = (
        "check the network and run again (torchvision fetches the official files once)"
        if download_allowed
        else 'allow the download: download: auto in book/params/*/*.yaml (download="auto" in '
        "the notebooks' parameters), --download on the command line, download=True in the "
        "API (needs internet, once)"
    )
    return (
        f"{dataset}: no data. {copy[0].upper() + copy[1:]} and torchvision's official files "
        f"are not in {where}.{failure} Two ways out: (1) {put}; or (2) {allow}; torchvision "
        f"then stores them in {where}."
    )


# --------------------------------------------------------------------------- Loader


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"kd2m.Loader|{int(seed)}|{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Loader:
    """Normalised (and, for training, augmented) float batches from uint8 images.

    The uint8 images (N, 3, H, W) and labels are moved to ``device`` once. Each batch is
    ``(x, y)``: ``x = ((augment(x_uint8) / 255) - mean) / std`` as ``dtype`` (computed
    in float32), ``y`` int64, both on ``device``.

    ``train=True``: each epoch visits the images in a seeded random permutation; each
    image gets a random crop of the zero-padded image (padding ``crop_padding``, i.e. a
    random translation by -p..p pixels in each direction with the uncovered border set
    to black, as torchvision's ``RandomCrop(32, padding=p)``) and, if ``hflip``, a
    random horizontal flip with probability 1/2. Permutation, offsets and flips are
    drawn on the CPU from a ``torch.Generator`` seeded by ``(seed, epoch)`` only, so a
    resumed run replays the same batches and results do not depend on the device.
    ``drop_last`` (default: ``train``) drops the last partial batch.

    ``train=False``: fixed order, no augmentation, last partial batch kept (unless
    ``drop_last=True``).
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        train: bool,
        device: str | torch.device = "cpu",
        crop_padding: int = 4,
        hflip: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise ValueError(
                f"x_uint8 must be uint8 (N, C, H, W), got {x_uint8.dtype} {tuple(x_uint8.shape)}"
            )
        if y.dim() != 1 or len(y) != len(x_uint8):
            raise ValueError(f"y must be (N,) with N={len(x_uint8)}, got {tuple(y.shape)}")
        c = x_uint8.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values, got {len(mean)} and {len(std)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device).contiguous()
        self.y = y.to(self.device, torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.crop_padding = int(crop_padding) if self.train else 0
        self.hflip = bool(hflip) and self.train
        self.seed = int(seed)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        if len(self) == 0:
            raise ValueError(
                f"no batch per epoch: {len(self.x)} images, batch_size "
                f"{self.batch_size}, drop_last={self.drop_last}"
            )

    @classmethod
    def from_data(cls, data: ImageData, split: str = "train", **kw) -> Loader:
        """Loader over ``data``'s ``split`` with its dataset's mean/std; ``train``
        defaults to ``split == "train"`` and ``hflip`` to the dataset's default."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        kw.setdefault("train", split == "train")
        kw.setdefault("hflip", data.info.hflip)
        kw.setdefault("mean", data.info.mean)
        kw.setdefault("std", data.info.std)
        x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        return cls(x, y, **kw)

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = ((x_uint8.to(torch.float32) / 255) - self.mean) / self.std
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _plan(self, epoch: int):
        """CPU-drawn order, crop offsets and flips for ``epoch`` (deterministic)."""
        n = len(self.x)
        if not self.train:
            return torch.arange(n, device=self.device), None, None
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g)
        p = self.crop_padding
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=g)  # (dy, dx) in padded image
        flips = torch.rand(n, generator=g) < 0.5
        if not self.hflip:
            flips.zero_()
        return order.to(self.device), offsets.to(self.device), flips.to(self.device)

    def _augment(self, xb: torch.Tensor, off: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Crop of the zero-padded batch at per-image offsets, flipped where ``flip``: one
        ``gather`` over the flattened padded images (no host synchronisation)."""
        p = self.crop_padding
        b, c, h, w = xb.shape
        xp = F.pad(xb, (p, p, p, p)) if p else xb
        ar_h = torch.arange(h, device=xb.device)
        ar_w = torch.arange(w, device=xb.device)
        rows = off[:, :1] + ar_h  # (B, H) rows of the padded image
        cols = off[:, 1:] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # (B, W)
        idx = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w)
        out = xp.reshape(b, c, -1).gather(2, idx.expand(b, c, h * w))
        return out.view(b, c, h, w)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterator over the ``len(self)`` batches ``(x, y)`` of epoch ``epoch``."""
        order, offsets, flips = self._plan(epoch)
        b = self.batch_size
        for k in range(len(self)):
            idx = order[k * b : (k + 1) * b]
            xb = self.x[idx]
            if self.train:
                xb = self._augment(xb, offsets[k * b : (k + 1) * b], flips[k * b : (k + 1) * b])
            yield self.normalize(xb), self.y[idx]

    def __repr__(self) -> str:
        return (
            f"Loader(n={len(self.x)}, batch_size={self.batch_size}, train={self.train}, "
            f"crop_padding={self.crop_padding}, hflip={self.hflip}, seed={self.seed}, "
            f"device={self.device}, batches={len(self)})"
        )
