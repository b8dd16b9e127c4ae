"""Image decoding for kd2m.data, in a module that imports only numpy and PIL, so that the
worker processes of a decoding pool start quickly (they never import torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["read_rgb", "read_chunk", "UnreadableImage"]


class UnreadableImage(ValueError):
    """An image file that PIL cannot decode (truncated, not an image). Its args are plain
    strings, so it crosses a process pool intact; kd2m.data turns it into a FileError."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return (
            f"cannot decode image {self.path} ({self.reason}): replace or delete the file and rerun"
        )


def read_rgb(path: str, size: int, resize: bool) -> np.ndarray:
    """One image as (size, size, 3) uint8 RGB. ``resize=False``: it must already be
    ``size`` x ``size`` (the known datasets' copies are never resampled).

    Modes: 16-bit grayscale is scaled to 8 bits (/257); a palette image with a
    transparent colour goes through RGBA; then ``convert("RGB")`` as torchvision's
    ``ImageFolder`` does (alpha dropped). JPEGs larger than twice ``size`` are decoded at a
    reduced DCT scale (PIL ``draft``) before the bilinear (antialiased) resize."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            if resize and opened.format == "JPEG":
                opened.draft("RGB", (size, size))  # the smallest DCT scale still >= size
            im: Image.Image = opened
            if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grayscale
                a = np.asarray(im).astype(np.float64) / 257.0
                im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
            elif im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UnreadableImage(str(path), str(e)) from e
    if rgb.size != (size, size):
        if not resize:
            raise ValueError(f"{path}: image of size {rgb.size}, expected {size}x{size} RGB")
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def read_chunk(paths: list[str], size: int, resize: bool) -> bytes:
    """The images of ``paths`` as the raw bytes of one (n, size, size, 3) uint8 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_rgb(p, size, resize)
    return out.tobytes()
