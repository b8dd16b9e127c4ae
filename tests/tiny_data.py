"""A tiny CIFAR-10-like image folder for the run-store tests (shared by test_runs and
test_store): 12 training and 4 test PNGs per class, each class with its own mean colour, so
that a network can learn it in one epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_cifar_folder(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(CIFAR10):
            d = root / split / name
            d.mkdir(parents=True)
            base = np.array([(c * 25) % 256, (c * 80) % 256, (255 - c * 25) % 256])
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root
