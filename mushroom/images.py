"""The one image path shared by import, training, evaluation and prediction (Pillow + NumPy only).

Every photo reaches a model through `load_image`: EXIF orientation applied, converted to RGB
(alpha composited on white, grayscale expanded), resized with padding to a square of `size`
pixels (aspect ratio kept, black borders), as uint8 [0, 255]. Backbone scaling happens inside
the model, so this is the same for every model.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mushroom.errors import UserError

# Decompression bombs are refused, but real camera photos (up to ~100 MP) are fine.
Image.MAX_IMAGE_PIXELS = 180_000_000

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class BadImage(UserError):
    """The bytes are not a complete, decodable image."""


def decode(data: bytes, what: str = "image") -> Image.Image:
    """Fully decode image bytes (a truncated file fails here, not later) and return an RGB image."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{what} is not a readable image ({exc.__class__.__name__}: {exc})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise BadImage(f"{path} does not exist or is not a file")
    return decode(path.read_bytes(), what=str(path))


def resize_with_pad(img: Image.Image, size: int) -> np.ndarray:
    """Scale the long side to `size` (aspect kept), centre on a black square: uint8 (size, size, 3)."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = np.asarray(img, dtype=np.uint8)
    return canvas


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """A photo file as model input: uint8 array (size, size, 3), RGB, [0, 255]."""
    return resize_with_pad(read(path), size)


def describe_bytes(data: bytes, what: str = "image") -> tuple[str, int, int]:
    """(sha256, width, height) of complete image bytes; BadImage when they do not decode."""
    img = decode(data, what)
    return hashlib.sha256(data).hexdigest(), img.width, img.height


def as_jpeg(data: bytes, what: str = "photo") -> bytes:
    """JPEG bytes are kept byte for byte; anything else (iNaturalist also hosts PNGs, folders hold
    any format) is checked and re-encoded once, so every stored <photo_id>.jpg is a JPEG.
    BadImage when the bytes do not decode."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    buf = io.BytesIO()
    decode(data, what).save(buf, format="JPEG", quality=95)
    return buf.getvalue()
