"""load_image and iter_image_files on real files built in tmp_path: every mode, orientation, format and failure."""
from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from facemtl.errors import ImageDecodeError, InvalidInputError
from facemtl.io import iter_image_files, load_image, stored_for_orientation

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def save(tmp_path: Path, image: Image.Image, name: str, **options: object) -> Path:
    """Save `image` under tmp_path (format from the suffix) and return the path."""
    path = tmp_path / name
    image.save(path, **options)
    return path


def check_result(out: np.ndarray, shape: tuple[int, int]) -> None:
    """The output contract: HxWx3 uint8, C-contiguous, owning its memory."""
    assert out.shape == (*shape, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous


def quadrants(height: int = 48, width: int = 64) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: every flip or turn changes it."""
    pixels = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w], pixels[:h, w:], pixels[h:, :w], pixels[h:, w:] = RED, GREEN, BLUE, WHITE
    return Image.fromarray(pixels)


def quadrant_colours(out: np.ndarray) -> list[tuple[int, ...]]:
    """Colour at the centre of each quadrant, in TL, TR, BL, BR order."""
    h, w = out.shape[:2]
    return [tuple(int(v) for v in out[y, x]) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A hand-made PNG whose header can claim anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- colour modes, via files Pillow reopens in that mode


def test_mode_1(tmp_path: Path) -> None:
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 0), 1)
    path = save(tmp_path, image, "bits.png")
    assert Image.open(path).mode == "1"
    out = load_image(path)
    check_result(out, (2, 4))
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_mode_l(tmp_path: Path) -> None:
    gray = np.array([[0, 1, 128, 255]], np.uint8)
    out = load_image(save(tmp_path, Image.fromarray(gray), "gray.png"))
    assert (out == gray[:, :, None]).all()


def test_mode_la_composites_over_white(tmp_path: Path) -> None:
    image = Image.new("LA", (3, 1))
    for x, pixel in enumerate([(100, 255), (100, 0), (0, 128)]):
        image.putpixel((x, 0), pixel)
    path = save(tmp_path, image, "gray_alpha.png")
    assert Image.open(path).mode == "LA"
    out = load_image(path).astype(int)
    assert out[0, 0].tolist() == [100] * 3
    assert out[0, 1].tolist() == [255] * 3
    assert np.abs(out[0, 2] - 127).max() <= 1  # black at half opacity over white


def _palette_image() -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([*RED, *GREEN, *BLUE] + [0, 0, 0] * 253)
    for x in range(3):
        image.putpixel((x, 0), x)
    return image


def test_mode_p_without_transparency(tmp_path: Path) -> None:
    path = save(tmp_path, _palette_image(), "palette.png")
    assert Image.open(path).mode == "P"
    assert load_image(path)[0].tolist() == [list(RED), list(GREEN), list(BLUE)]


def test_mode_p_with_transparency(tmp_path: Path) -> None:
    path = save(tmp_path, _palette_image(), "palette_t.png", transparency=1)
    opened = Image.open(path)
    assert opened.mode == "P" and "transparency" in opened.info
    assert load_image(path)[0].tolist() == [list(RED), list(WHITE), list(BLUE)]


def test_mode_rgb(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert (load_image(save(tmp_path, Image.fromarray(pixels), "rgb.png")) == pixels).all()


def test_mode_rgba_half_transparent_red(tmp_path: Path) -> None:
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 128))
    image.putpixel((1, 0), (10, 20, 30, 255))
    path = save(tmp_path, image, "rgba.png")
    assert Image.open(path).mode == "RGBA"
    out = load_image(path).astype(int)
    assert np.abs(out[0, 0] - [255, 128, 128]).max() <= 1
    assert out[0, 1].tolist() == [10, 20, 30]


def test_mode_cmyk_jpeg_white(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert np.abs(load_image(path).astype(int) - 255).max() <= 2


def test_mode_cmyk_tiff_exact(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 255, 255, 0))
    path = save(tmp_path, image, "cmyk.tiff")
    assert Image.open(path).mode == "CMYK"
    assert load_image(path)[0].tolist() == [list(WHITE), list(RED)]


def test_mode_ycbcr(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("YCbCr", (2, 2), (128, 128, 128)), "ycbcr.tiff")
    assert Image.open(path).mode == "YCbCr"
    assert np.abs(load_image(path).astype(int) - 128).max() <= 1


_SIXTEEN = np.array([[0, 32896, 65535, 1000, 128]], np.uint16)
_SIXTEEN_AS_8 = [0, 128, 255, 4, 0]  # round(v / 257); 1000 / 257 = 3.9


@pytest.mark.parametrize(
    ("mode", "name", "dtype", "reopened_as"),
    [
        ("I;16", "g16.png", "<u2", "I;16"),
        ("I;16", "g16.tiff", "<u2", "I;16"),
        ("I;16B", "g16b.tiff", ">u2", "I;16B"),
        ("I;16L", "g16l.tiff", "<u2", "I;16"),  # Pillow names little-endian 16-bit plain "I;16" on reading
    ],
)
def test_16bit_gray_scales_not_clips(tmp_path: Path, mode: str, name: str, dtype: str, reopened_as: str) -> None:
    image = Image.frombytes(mode, (5, 1), _SIXTEEN.astype(dtype).tobytes())
    path = save(tmp_path, image, name)
    assert Image.open(path).mode == reopened_as
    out = load_image(path)
    check_result(out, (1, 5))
    assert out[0, :, 0].tolist() == _SIXTEEN_AS_8 and (out == out[:, :, :1]).all()


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_pil_images_of_each_mode(mode: str) -> None:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    image = Image.frombytes(mode, (5, 1), _SIXTEEN.astype(dtype).tobytes())
    assert image.mode == mode
    assert load_image(image)[0, :, 1].tolist() == _SIXTEEN_AS_8


def test_16bit_rgb_png_is_8bit_in_pillow(tmp_path: Path) -> None:
    rgb = np.array([[[65535, 32896, 0]]], dtype=">u2")
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(1, 1, 16, 2, zlib.compress(b"\x00" + rgb.tobytes())))
    assert Image.open(path).mode == "RGB"  # Pillow keeps the high byte of each 16-bit sample
    assert load_image(path)[0, 0].tolist() == [255, 128, 0]


def test_mode_i_in_16bit_range_scales(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535, -5]], np.int32)
    path = save(tmp_path, Image.fromarray(values), "int32.tiff")
    assert Image.open(path).mode == "I"
    assert load_image(path)[0, :, 0].tolist() == [0, 128, 255, 0]


def test_mode_i_beyond_16bit_clips(tmp_path: Path) -> None:
    values = np.array([[0, 100, 255, 300, 70000, -5]], np.int32)
    path = save(tmp_path, Image.fromarray(values), "int32_big.tiff")
    assert load_image(path)[0, :, 0].tolist() == [0, 100, 255, 255, 255, 0]


def test_mode_f_unit_range_scales(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)
    path = save(tmp_path, Image.fromarray(values), "float.tiff")
    assert Image.open(path).mode == "F"
    assert load_image(path)[0, :, 0].tolist() == [0, 128, 255, 51]


def test_mode_f_beyond_unit_range_clips(tmp_path: Path) -> None:
    values = np.array([[0.5, 3.0, 254.6, 400.0, -2.0, np.nan]], np.float32)
    path = save(tmp_path, Image.fromarray(values), "float_big.tiff")
    assert load_image(path)[0, :, 0].tolist() == [0, 3, 255, 255, 0, 0]


@pytest.mark.parametrize("mode", ["RGBX", "RGBa", "PA", "HSV", "LAB"])
def test_other_pil_modes_convert(mode: str) -> None:
    image = Image.new(mode, (3, 2))
    out = load_image(image)
    check_result(out, (2, 3))


# ---------------------------------------------------------------- EXIF orientation

def _with_orientation(tmp_path: Path, upright: Image.Image, orientation: int, name: str, **options: object) -> Path:
    stored = Image.fromarray(stored_for_orientation(np.asarray(upright), orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(tmp_path, stored, name, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(tmp_path: Path, orientation: int) -> None:
    path = _with_orientation(tmp_path, quadrants(), orientation, f"o{orientation}.jpg", quality=90)
    assert Image.open(path).getexif()[0x0112] == orientation
    out = load_image(path)
    check_result(out, (48, 64))
    for got, want in zip(quadrant_colours(out), [RED, GREEN, BLUE, WHITE]):
        assert np.abs(np.array(got) - want).max() <= 40, (orientation, quadrant_colours(out))


@pytest.mark.parametrize("suffix", ["png", "tiff", "webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_lossless_exact(tmp_path: Path, orientation: int, suffix: str) -> None:
    upright = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    options = {"lossless": True} if suffix == "webp" else {}
    path = _with_orientation(tmp_path, upright, orientation, f"o{orientation}.{suffix}", **options)
    out = load_image(path)
    assert (out == np.asarray(upright)).all()
    assert (out == np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))).all()


@pytest.mark.parametrize("suffix", ["png", "tiff"])
def test_orientation_of_pil_input_applied_once(tmp_path: Path, suffix: str) -> None:
    upright = quadrants(6, 8)
    image = Image.open(_with_orientation(tmp_path, upright, 6, f"o6.{suffix}"))
    first, second = load_image(image), load_image(image)
    assert (first == np.asarray(upright)).all() and (second == first).all()
    if suffix == "png":  # the caller's image keeps its tag; Pillow's TIFF loader itself rotates and drops it
        assert image.getexif()[0x0112] == 6 and image.size == (6, 8)


def test_unknown_orientation_value_is_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 9
    path = save(tmp_path, quadrants(6, 8), "o9.png", exif=exif)
    assert (load_image(path) == np.asarray(quadrants(6, 8))).all()


# ---------------------------------------------------------------- formats, frames, input kinds


@pytest.mark.parametrize(
    ("name", "options", "tolerance"),
    [
        ("q.jpg", {"quality": 95}, 40),
        ("q.jpeg", {"quality": 95}, 40),
        ("q.png", {}, 0),
        ("q.webp", {"lossless": True}, 0),
        ("q_lossy.webp", {"quality": 90}, 40),
        ("q.bmp", {}, 0),
        ("q.tif", {}, 0),
        ("q.tiff", {"compression": "tiff_lzw"}, 0),
        ("q.gif", {}, 0),
    ],
)
def test_formats(tmp_path: Path, name: str, options: dict, tolerance: int) -> None:
    path = save(tmp_path, quadrants(), name, **options)
    out = load_image(path)
    check_result(out, (48, 64))
    for got, want in zip(quadrant_colours(out), [RED, GREEN, BLUE, WHITE]):
        assert np.abs(np.array(got) - want).max() <= tolerance


@pytest.mark.parametrize(("name", "options"), [("a.gif", {"duration": 40, "loop": 0}), ("a.webp", {"lossless": True}),
                                               ("a.tiff", {}), ("a.png", {})])
def test_animated_and_multipage_give_first_frame(tmp_path: Path, name: str, options: dict) -> None:
    frames = [Image.new("RGB", (5, 4), colour) for colour in (RED, GREEN, BLUE)]
    path = save(tmp_path, frames[0], name, save_all=True, append_images=frames[1:], **options)
    assert Image.open(path).n_frames == 3
    out = load_image(path)
    check_result(out, (4, 5))
    assert (out == RED).all()


def test_bytes_bytearray_memoryview_and_pil_inputs(tmp_path: Path) -> None:
    path = save(tmp_path, quadrants(), "q.png")
    data = path.read_bytes()
    expected = load_image(path)
    padded = memoryview(b"xx" + data)[2:]
    for src in (data, bytearray(data), memoryview(data), padded, str(path), Image.open(path)):
        assert (load_image(src) == expected).all()


def test_pil_input_not_modified() -> None:
    image = Image.new("RGBA", (3, 2), (255, 0, 0, 128))
    before = image.tobytes()
    load_image(image)
    assert image.mode == "RGBA" and image.size == (3, 2) and image.tobytes() == before


def test_real_photo_from_wider(wider_dir: Path) -> None:
    photo = next(iter(sorted(wider_dir.rglob("*.jpg"))), None)
    if photo is None:
        pytest.skip(f"no .jpg under {wider_dir}")
    out = load_image(photo)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))
    check_result(out, reference.shape[:2])
    assert (out == reference).all()
    assert out.std() > 5  # a real photo, not a flat fill


# ---------------------------------------------------------------- failures


def _assert_decode_error(src: object, source: str, fragment: str, **kwargs: object) -> ImageDecodeError:
    """load_image(src) raises exactly ImageDecodeError naming `source`, with no chained library traceback."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as caught:
            load_image(src, **kwargs)
    assert not [w for w in seen if not issubclass(w.category, ResourceWarning)]  # e.g. DecompressionBombWarning
    error = caught.value
    assert type(error) is ImageDecodeError
    assert error.source == source and str(error).startswith(f"{source}: ")
    assert fragment in error.reason, error.reason
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return error


def _good_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _good_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x10
    return bytes(out)


_BAD_FILES = {
    "zero_bytes.jpg": (lambda: b"", "file is empty (0 bytes)"),
    "text.jpg": (lambda: b"just some text, no pixels here\n", "not an image file"),
    "page.png": (lambda: b"<!DOCTYPE html><html></html>\n", "not an image file"),
    "truncated_eoi.jpg": (lambda: _good_jpeg()[:-2], "truncated or corrupt"),
    "truncated_half.jpg": (lambda: _good_jpeg()[: len(_good_jpeg()) // 2], "truncated or corrupt"),
    "truncated_half.png": (lambda: _good_png()[: len(_good_png()) // 2], "truncated or corrupt"),
    "truncated_iend.png": (lambda: _good_png()[:-4], "truncated or corrupt"),
    "flipped_idat.png": (lambda: _flip(_good_png(), 200), "corrupt"),
    "flipped_sof.jpg": (lambda: _flip(_good_jpeg(), 1), "not an image file"),
    "bomb.png": (lambda: png_bytes(30_000, 30_000, 1, 0, zlib.compress(bytes(64))), "exceeds the limit of"),
    "bomb_10g.png": (lambda: png_bytes(100_000, 100_000, 1, 0, b"x"), "exceeds the limit of"),
    "zero_width.png": (lambda: png_bytes(0, 10, 8, 0, zlib.compress(bytes(20))), "not an image file"),
    "postscript.jpg": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image file"),
}


@pytest.mark.parametrize("name", sorted(_BAD_FILES))
def test_bad_files_raise_decode_error_and_stay_unchanged(tmp_path: Path, name: str) -> None:
    make, fragment = _BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    _assert_decode_error(path, str(path), fragment)
    _assert_decode_error(before[0], "<bytes>", fragment if before[0] else "data is empty")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_missing_file_folder_and_bad_path(tmp_path: Path) -> None:
    _assert_decode_error(tmp_path / "nope.jpg", str(tmp_path / "nope.jpg"), "no such file")
    _assert_decode_error(str(tmp_path), str(tmp_path), "folder")
    _assert_decode_error("bad\0name.jpg", "bad\0name.jpg", "not a valid file path")


def test_own_pixel_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("RGB", (20, 20)), "small.png")
    error = _assert_decode_error(path, str(path), "image of 20x20 pixels exceeds the limit of 100 pixels",
                                 max_pixels=100)
    assert "20x20" in str(error)
    assert load_image(path, max_pixels=400).shape == (20, 20, 3)
    _assert_decode_error(Image.new("L", (20, 20)), "<PIL image>", "exceeds", max_pixels=399)


def test_pillow_bomb_warning_suppressed_and_error_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned = save(tmp_path, Image.new("L", (40, 40), 7), "warned.png")  # 1600 px: Pillow would only warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (load_image(warned) == 7).all()
    refused = save(tmp_path, Image.new("L", (50, 50)), "refused.png")  # 2500 px: over Pillow's 2x limit
    _assert_decode_error(refused, str(refused), "image of 2,500 pixels exceeds the limit of 2,000 pixels")


def test_zero_size_pil_image() -> None:
    _assert_decode_error(Image.new("RGB", (0, 5)), "<PIL image>", "zero width or height")


def test_empty_bytes() -> None:
    _assert_decode_error(b"", "<bytes>", "empty")
    _assert_decode_error(memoryview(b""), "<bytes>", "empty")


def test_truncated_pil_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_good_jpeg()[:-10])
    with Image.open(path) as image:
        _assert_decode_error(image, "<PIL image>", "truncated or corrupt")


def test_truncation_tolerance_flag_left_off(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_good_jpeg()[:-10])
    with pytest.raises(ImageDecodeError):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("src", [None, 3, 2.5, ["a.jpg"], {"path": "a.jpg"}])
def test_unsupported_source_types(src: object) -> None:
    with pytest.raises(InvalidInputError, match="expected a path, bytes, PIL.Image.Image or numpy array"):
        load_image(src)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_pixels", [0, -1, 1.5, True, "100"])
def test_bad_max_pixels(max_pixels: object) -> None:
    with pytest.raises(InvalidInputError, match="max_pixels"):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=max_pixels)  # type: ignore[arg-type]


# ---------------------------------------------------------------- numpy arrays


def _check_array_call(array: np.ndarray) -> np.ndarray:
    """load_image(array) with the no-aliasing, no-mutation contract checked."""
    before, writeable = array.copy(), array.flags.writeable
    out = load_image(array)
    assert not np.shares_memory(out, array)
    assert array.flags.writeable == writeable
    assert array.dtype == before.dtype and np.array_equal(array, before, equal_nan=array.dtype.kind == "f")
    check_result(out, array.shape[:2])
    return out


def test_array_uint8_shapes() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert (_check_array_call(rgb) == rgb).all()
    gray = rgb[:, :, 0]
    assert (_check_array_call(gray) == gray[:, :, None]).all()
    assert (_check_array_call(gray[:, :, None]) == gray[:, :, None]).all()


def test_array_rgba_over_white() -> None:
    rgba = np.array([[[255, 0, 0, 128], [0, 0, 0, 0], [1, 2, 3, 255]]], np.uint8)
    out = _check_array_call(rgba).astype(int)
    assert np.abs(out[0, 0] - [255, 128, 128]).max() <= 1
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 2].tolist() == [1, 2, 3]


def test_array_uint16_and_bool() -> None:
    assert _check_array_call(np.array([[0, 32896, 65535]], np.uint16))[0, :, 0].tolist() == [0, 128, 255]
    big_endian = np.array([[0, 32896, 65535]], ">u2")
    assert _check_array_call(big_endian)[0, :, 2].tolist() == [0, 128, 255]
    assert _check_array_call(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_array_float_unit_range(dtype: type) -> None:
    values = np.array([[0.0, 0.5, 1.0, 0.2]], dtype)
    assert _check_array_call(values)[0, :, 0].tolist() == [0, 128, 255, 51]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_array_other_ints_within_byte_range(dtype: type) -> None:
    top = 127 if dtype == np.int8 else 255
    assert _check_array_call(np.array([[0, 7, top]], dtype))[0, :, 1].tolist() == [0, 7, top]


def test_array_non_contiguous_and_read_only() -> None:
    base = np.random.default_rng(4).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    strided = base[::2, ::-1, :3]
    assert (_check_array_call(strided) == strided).all()
    fortran = np.asfortranarray(base[:, :, :3])
    assert (_check_array_call(fortran) == fortran).all()
    frozen = base[:, :, :3].copy()
    frozen.flags.writeable = False
    assert (_check_array_call(frozen) == frozen).all()


def test_array_uint8_result_is_a_copy() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    out = load_image(rgb)
    out[:] = 9
    assert (rgb == 0).all()


_REFUSED = [
    (np.full((2, 2), np.nan, np.float32), "NaN or infinity"),
    (np.array([[0.5, np.inf]]), "NaN or infinity"),
    (np.array([[0.5, -np.inf]], np.float16), "NaN or infinity"),
    (np.array([[0.0, 1.5]]), "got values in [0, 1.5]"),
    (np.array([[-0.1, 0.5]], np.float32), "[0, 1]"),
    (np.array([[0.0, 255.0]]), "[0, 1]"),
    (np.zeros((2, 2), np.complex64), "got dtype complex64"),
    (np.zeros((2, 2), object), "got dtype object"),
    (np.zeros((2, 2), "U3"), "got dtype <U3"),
    (np.zeros((2, 2), "datetime64[s]"), "got dtype datetime64"),
    (np.zeros((2, 2), np.longdouble), "got dtype"),
    (np.zeros((0, 5, 3), np.uint8), "got shape (0, 5, 3)"),
    (np.zeros((5, 0), np.uint8), "got shape (5, 0)"),
    (np.zeros((0,), np.uint8), "got shape (0,)"),
    (np.zeros((5,), np.uint8), "got shape (5,)"),
    (np.zeros((2, 2, 3, 1), np.uint8), "got shape (2, 2, 3, 1)"),
    (np.zeros((2, 2, 2), np.uint8), "got shape (2, 2, 2)"),
    (np.zeros((2, 2, 5), np.uint8), "got shape (2, 2, 5)"),
    (np.array(7, np.uint8), "got shape ()"),
    (np.array([[0, 256]], np.int32), "got values in [0, 256]"),
    (np.array([[-1, 3]], np.int16), "got values in [-1, 3]"),
    (np.array([[0, 300]], np.uint32), "[0, 255]"),
]


@pytest.mark.parametrize(("array", "fragment"), _REFUSED, ids=[f"{a.dtype}-{a.shape}" for a, _ in _REFUSED])
def test_array_refused(array: np.ndarray, fragment: str) -> None:
    before = array.copy()
    with pytest.raises(InvalidInputError) as caught:
        load_image(array)
    assert type(caught.value) is InvalidInputError
    assert fragment in str(caught.value) and "expected" in str(caught.value)
    assert array.dtype.kind in "OUM" or np.array_equal(array, before, equal_nan=True)


# ---------------------------------------------------------------- iter_image_files


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_iter_image_files_walks_sorted_and_filters(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for rel in ["b.png", "a.JPG", "sub/c.webp", "sub/deep/d.tiff", "sub-x/e.gif", "notes.txt", "sub/f.bmp",
                "g.jpeg", "h.tif", ".hidden.jpg", ".cache/i.png", "raw.cr2"]:
        _touch(root / rel)
    (root / "folder.jpg").mkdir()
    got = [p.relative_to(root).as_posix() for p in iter_image_files([root])]
    assert got == ["a.JPG", "b.png", "g.jpeg", "h.tif", "sub/c.webp", "sub/deep/d.tiff", "sub/f.bmp", "sub-x/e.gif"]
    shallow = [p.name for p in iter_image_files([str(root)], recursive=False)]
    assert shallow == ["a.JPG", "b.png", "g.jpeg", "h.tif"]


def test_iter_image_files_keeps_explicit_files_and_argument_order(tmp_path: Path) -> None:
    text = _touch(tmp_path / "list.txt")
    folder = tmp_path / "f"
    one, two = _touch(folder / "1.png"), _touch(folder / "2.jpg")
    assert iter_image_files([text, folder, one]) == [text, one, two]
    assert iter_image_files(str(one)) == [one]
    assert iter_image_files([]) == []


def test_iter_image_files_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(InvalidInputError, match=f"^{re.escape(str(missing))}: no such file or folder$"):
        iter_image_files([tmp_path, missing])
