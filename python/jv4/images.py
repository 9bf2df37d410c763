"""Image inputs for ``Model.embed_images``: what the engine is handed.

An image may be a path (``str`` or ``os.PathLike``), the bytes of an image
file, a Pillow image, or a numpy ``height x width x 3`` uint8 array (RGB).
Files are decoded by the engine (stb_image: PNG, JPEG, GIF, BMP, PSD, PNM,
HDR, TGA), without the GIL; other formats (WebP, TIFF, HEIF, ...) are decoded
with Pillow when it is installed (``pip install 'jv4[images]'``). Pillow
images are converted to RGB here, an alpha channel composited over white as
transformers' image processors do (the engine does the same for files).
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np

from . import _core

__all__ = ["ImageLike", "prepare_images"]

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert") and hasattr(x, "mode")


def _is_single(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)) or _is_pil(x)


def _pil_rgb(img: Any, name: str) -> np.ndarray:
    try:
        img.load()
    except Exception as err:  # Pillow's own errors (truncated data, ...)
        raise ValueError(f"{name}: Pillow cannot read the image: {err}") from None
    if img.width == 0 or img.height == 0:
        raise ValueError(f"{name}: the image is empty ({img.width}x{img.height} pixels)")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _decode_with_pillow(data: bytes, fmt: str, name: str) -> Any:
    """Pixels of a file the engine does not decode, via Pillow; or the bytes
    as they are when Pillow is missing (the engine's error then says so)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > _core.MAX_IMAGE_PIXELS:
                raise ValueError(f"{name}: {w}x{h} pixels is more than the limit of {_core.MAX_IMAGE_PIXELS}")
            return _pil_rgb(img, name)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"{name}: not a readable {fmt or 'image'} file: {err}") from None


def _one(x: Any, i: int) -> tuple:
    if isinstance(x, (str, os.PathLike)):
        path = os.fspath(x)
        name = f"image {i} ({path})"
        if os.path.isdir(path):
            raise IsADirectoryError(f"{name}: is a directory, not an image file")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{name}: no such file") from None
        return _encoded(data, name)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return _encoded(bytes(x), f"image {i} ({len(x)} bytes)")
    if isinstance(x, np.ndarray):
        name = f"image {i} (array {'x'.join(map(str, x.shape))} {x.dtype})"
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"{name}: an image array must be height x width x 3 (RGB) uint8")
        return ("rgb", name, np.ascontiguousarray(x))
    if _is_pil(x):
        name = f"image {i} (PIL {x.mode} {x.width}x{x.height})"
        return ("rgb", name, _pil_rgb(x, name))
    raise TypeError(f"image {i} must be a path, the bytes of an image file, a PIL image or a "
                    f"height x width x 3 uint8 numpy array, got {type(x).__name__}")


def _encoded(data: bytes, name: str) -> tuple:
    fmt, native = _core.image_format(data)
    if not native:
        rgb = _decode_with_pillow(data, fmt, name)
        if rgb is not None:
            return ("rgb", name, rgb)
    return ("encoded", name, data)


def prepare_images(images: Any) -> tuple:
    """(items for the engine, single): one image or a sequence of them."""
    if _is_single(images):
        return [_one(images, 0)], True
    try:
        items = list(images)
    except TypeError:
        raise TypeError(f"images must be an image (path, bytes, PIL image, numpy array) or a sequence of "
                        f"them, got {type(images).__name__}") from None
    return [_one(x, i) for i, x in enumerate(items)], False
