"""Image input: turn a path, bytes, PIL image or array into one RGB uint8 HxWx3 array, or fail with a typed error."""
from __future__ import annotations

import functools
import io
import os
import re
import stat
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from facemtl.errors import ImageDecodeError, InvalidInputError

__all__ = ["IMAGE_FORMATS", "IMAGE_SUFFIXES", "ImageSource", "iter_image_files", "load_image"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

# Pillow formats we let decode: the photo formats (camera MPO files open as JPEG). Legacy and scripted formats
# (EPS runs Ghostscript) are refused as unrecognised.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
DEFAULT_MAX_PIXELS = 178_956_970  # equals Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS) by default

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_ORIENTATION_TAG = 0x0112
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return `src` as a new C-contiguous RGB uint8 HxWx3 array, upright per EXIF and alpha composited over white."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InvalidInputError(f"max_pixels must be a positive int; got {max_pixels!r}")
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, Image.Image):
        return _decode("<PIL image>", src, max_pixels)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = src.tobytes() if isinstance(src, memoryview) else bytes(src)
        if not data:
            raise ImageDecodeError("<bytes>", "data is empty (0 bytes)")
        return _decode("<bytes>", io.BytesIO(data), max_pixels)
    if isinstance(src, (str, os.PathLike)):
        return _load_path(os.fsdecode(os.fspath(src)), max_pixels)
    raise InvalidInputError(
        f"expected a path, bytes, PIL.Image.Image or numpy array; got {type(src).__module__}.{type(src).__qualname__}"
    )


def iter_image_files(paths: Sequence[str | Path] | str | Path, recursive: bool = True) -> list[Path]:
    """Expand files and folders into image files: folders walked in sorted order, explicit files always kept."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found.extend(_images_in_folder(path, recursive))
        elif path.exists():
            found.append(path)
        else:
            raise InvalidInputError(f"{entry}: no such file or folder")
    return list(dict.fromkeys(found))  # drop repeats, keep the first position


def _images_in_folder(folder: Path, recursive: bool) -> list[Path]:
    """Image files under `folder` (hidden names skipped), sorted by their path parts so the order is stable."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [] if not recursive else sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                candidate = Path(root, name)
                if candidate.is_file():
                    files.append(candidate)
    return sorted(files, key=lambda p: p.relative_to(folder).parts)


def _load_path(source: str, max_pixels: int) -> np.ndarray:
    """Check that `source` is a non-empty regular file, then decode it."""
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise ImageDecodeError(source, "no such file") from None
    except OSError as exc:
        raise ImageDecodeError(source, f"cannot access file ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # e.g. an embedded NUL byte
        raise ImageDecodeError(source, "not a valid file path") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageDecodeError(source, "is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageDecodeError(source, "not a regular file")
    if info.st_size == 0:
        raise ImageDecodeError(source, "file is empty (0 bytes)")
    try:
        handle = open(source, "rb")
    except OSError as exc:
        raise ImageDecodeError(source, f"cannot open file ({exc.strerror or type(exc).__name__})") from None
    with handle:
        return _decode(source, handle, max_pixels)


@functools.cache
def _open_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow build can open (naming an unregistered one makes Image.open raise)."""
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


def _decode(source: str, src: BinaryIO | Image.Image, max_pixels: int) -> np.ndarray:
    """Decode the first frame fully; every failure inside Pillow or numpy becomes an ImageDecodeError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = src if isinstance(src, Image.Image) else Image.open(src, formats=_open_formats())
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(source, f"image has zero width or height ({width}x{height})")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    source, f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels"
                )
            image.load()  # full decode now, so truncation is an error here and not a grey band later
            if image.format == "PNG" and not isinstance(src, Image.Image):
                _check_png_chunks(source, src)
            rgb = _pil_to_rgb(source, image)
            # read after load(): Pillow's TIFF loader turns the pixels upright itself and then drops the tag
            return _apply_orientation(rgb, _orientation(image))
    except (ImageDecodeError, InvalidInputError):
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (2 * Image.MAX_IMAGE_PIXELS) fired while reading the header; it gives no dimensions
        found = _BOMB_PIXELS.search(str(exc))
        size = f"image of {int(found.group(1)):,} pixels" if found else "image"
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ImageDecodeError(source, f"{size} exceeds the limit of {limit:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(source, "not an image file (unrecognised format)") from None
    except MemoryError:
        raise ImageDecodeError(source, "not enough memory to decode the image") from None
    except Exception:
        raise ImageDecodeError(source, "truncated or corrupt image data") from None


def _check_png_chunks(source: str, stream: BinaryIO) -> None:
    """Verify every PNG chunk's CRC up to IEND: Pillow skips the CRCs of pixel data, so bit flips there pass."""
    stream.seek(8)
    while True:
        header = stream.read(8)
        if len(header) < 8:
            raise ImageDecodeError(source, "truncated or corrupt image data (PNG ends before its IEND chunk)")
        left, crc = int.from_bytes(header[:4], "big"), zlib.crc32(header[4:])
        while left:  # in pieces: a corrupt length field must not make us allocate gigabytes
            piece = stream.read(min(left, 1 << 20))
            if not piece:
                break
            crc, left = zlib.crc32(piece, crc), left - len(piece)
        stored = stream.read(4)
        if left or len(stored) < 4:
            raise ImageDecodeError(source, "truncated or corrupt image data (PNG chunk cut short)")
        if crc != int.from_bytes(stored, "big"):
            raise ImageDecodeError(source, "truncated or corrupt image data (PNG checksum mismatch)")
        if header[4:] == b"IEND":
            return


def _pil_to_rgb(source: str, image: Image.Image) -> np.ndarray:
    """Convert a loaded image of any Pillow mode to RGB uint8, scaling 16-bit and float data instead of clipping."""
    mode = image.mode
    if mode.startswith("I;16"):
        gray = _scale_16bit(np.asarray(image))
    elif mode == "I":
        values = np.asarray(image)
        if values.max() <= 65535:
            gray = _scale_16bit(np.clip(values, 0, None))
        else:
            gray = np.clip(values, 0, 255).astype(np.uint8)
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        gray = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    else:
        try:
            if mode in _ALPHA_MODES or "transparency" in image.info:
                return _over_white(np.asarray(image.convert("RGBA")))
            return np.array(image.convert("RGB"))
        except ValueError:  # Pillow has no conversion for this mode
            raise ImageDecodeError(source, f"unsupported colour mode {mode!r}") from None
    return np.repeat(gray[:, :, None], 3, axis=2)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 as round(v / 257), so 65535 -> 255 and 32896 -> 128."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA uint8 over a white background, rounding to nearest."""
    color = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8); a missing, odd or unreadable tag counts as 1 so bad metadata never loses a photo."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


EXIF_TURNS: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
    5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}
"""How the stored pixels of each EXIF orientation turn upright, as (swap rows and columns, then reverse the
rows, reverse the columns): the one table behind :func:`load_image` and the images its tests store."""


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored HxWx3 array upright as ImageOps.exif_transpose would, without its full copy when upright."""
    swap, rows, cols = EXIF_TURNS[orientation]
    out = rgb.transpose(1, 0, 2) if swap else rgb
    out = out[::-1] if rows else out
    out = out[:, ::-1] if cols else out
    return np.ascontiguousarray(out)


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The HxWx3 pixels a camera stores for an ``upright`` picture under an EXIF orientation (the inverse of
    the turn :func:`load_image` applies): how test images of every orientation are made."""
    swap, rows, cols = EXIF_TURNS[orientation]
    out = upright[:, ::-1] if cols else upright
    out = out[::-1] if rows else out
    return np.ascontiguousarray(out.transpose(1, 0, 2) if swap else out)


_ARRAY_DTYPES = "uint8, uint16, bool, float16/32/64 in [0, 1] or integers in [0, 255]"


def _from_array(array: np.ndarray) -> np.ndarray:
    """Validate an HxW / HxWxC array and return a new RGB uint8 copy (greyscale repeated, RGBA over white)."""
    kind, itemsize = array.dtype.kind, array.dtype.itemsize
    if kind not in "biuf" or (kind == "f" and itemsize > 8):
        raise InvalidInputError(f"expected an image array of dtype {_ARRAY_DTYPES}; got dtype {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidInputError(
            f"expected an image array of shape HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"expected an image with non-zero height and width; got shape {array.shape}")
    pixels = _array_to_uint8(array)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if channels == 4:
        return _over_white(pixels)
    return np.array(pixels, dtype=np.uint8, order="C", copy=True)


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map the array's values to uint8 by its dtype, refusing values that the dtype's convention cannot hold."""
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if kind == "u" and array.dtype.itemsize == 1:
        return array
    if kind == "u" and array.dtype.itemsize == 2:  # any byte order
        return _scale_16bit(array)
    if kind == "f":
        if not np.isfinite(array).all():
            raise InvalidInputError(f"expected finite float values in [0, 1]; got NaN or infinity ({array.dtype})")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InvalidInputError(
                f"expected float values in [0, 1]; got values in [{low:g}, {high:g}] ({array.dtype})"
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise InvalidInputError(
            f"expected {array.dtype} values in [0, 255] (use uint16 for 16-bit data); got values in [{low}, {high}]"
        )
    return array.astype(np.uint8)


ImageLike = Any  # path, bytes, PIL image or numpy array: whatever load_image takes


def _is_single_image(images: Any) -> bool:
    """True when ``images`` is one photo rather than a sequence of photos."""
    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return not isinstance(images, (list, tuple))


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
    """One photo, a list of photos or an (N,H,W,C) array -> list of RGB uint8 arrays."""
    if _is_single_image(images):
        return [load_image(images)]
    return [load_image(img) for img in images]
