"""Fuzzing load_image: the crafted corpus in tests/corpus, random damage to valid encodings, and random arrays.

Whatever the input, load_image returns a valid RGB uint8 HxWx3 array or raises ImageDecodeError (encoded input)
or InvalidInputError (arrays): never another exception. Regenerate the corpus with tools/make_fuzz_corpus.py.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from facemtl.errors import ImageDecodeError, InvalidInputError
from facemtl.io import load_image

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text())
CASES_TRIED = [0]  # hypothesis examples run by this module, reported by the last test


def check_image(out: np.ndarray) -> None:
    """The success contract of load_image."""
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3 and out.shape[0] > 0 and out.shape[1] > 0
    assert out.flags.c_contiguous


# ---------------------------------------------------------------- (a) crafted corpus


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_file_gives_manifest_outcome(name: str, as_bytes: bool) -> None:
    entry, path = MANIFEST[name], CORPUS / name
    src = path.read_bytes() if as_bytes else path
    source = "<bytes>" if as_bytes else str(path)
    if entry["expect"] == "ImageDecodeError":
        with pytest.raises(ImageDecodeError) as caught:
            load_image(src)
        assert type(caught.value) is ImageDecodeError and caught.value.source == source
        return
    assert entry["expect"] == "ok", entry
    out = load_image(src)
    check_image(out)
    assert list(out.shape) == entry["shape"]
    for y, x, *rgb in entry.get("pixels", []):
        assert np.abs(out[y, x].astype(int) - rgb).max() <= entry.get("tol", 0), (name, y, x, out[y, x], rgb)


def test_corpus_is_complete_and_small() -> None:
    files = {p.name for p in CORPUS.iterdir()} - {"MANIFEST.json"}
    assert files == set(MANIFEST)
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 400_000
    assert {e["expect"] for e in MANIFEST.values()} == {"ok", "ImageDecodeError"}


# ---------------------------------------------------------------- (b) damaged encodings


def _encode(fmt: str, **options: object) -> bytes:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:12, 0:16]
    pixels = np.stack([xx * 16, yy * 20, (xx + yy) * 9], axis=-1) + rng.integers(0, 8, (12, 16, 3))
    image = Image.fromarray(pixels.astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


ENCODINGS = {
    "jpeg": _encode("JPEG", quality=85),
    "png": _encode("PNG"),
    "gif": _encode("GIF"),
    "webp": _encode("WEBP", quality=80),
    "webp_lossless": _encode("WEBP", lossless=True),
}
# Formats whose every cut is detectable: JPEG needs its end marker, load_image walks PNG chunks to IEND, and a
# WebP's RIFF header states its length. A GIF cut just before its trailer byte still holds the whole frame.
STRICT_TRUNCATION = {"jpeg", "png", "webp", "webp_lossless"}


def load_or_decode_error(data: bytes) -> np.ndarray | None:
    """load_image(data): the array, or None for ImageDecodeError; any other exception fails the test."""
    try:
        out = load_image(data)
    except ImageDecodeError as error:
        assert type(error) is ImageDecodeError and error.source == "<bytes>" and error.reason
        return None
    check_image(out)
    return out


@pytest.mark.parametrize("name", sorted(STRICT_TRUNCATION))
def test_every_truncation_refused(name: str) -> None:
    encoded = ENCODINGS[name]
    accepted = [cut for cut in range(len(encoded)) if load_or_decode_error(encoded[:cut]) is not None]
    assert not accepted, f"{name}: cuts {accepted[:5]} of {len(encoded)} bytes were accepted"


def test_every_single_bit_flip_of_png_refused() -> None:
    encoded = ENCODINGS["png"]
    accepted = []
    for position in range(len(encoded)):
        for bit in range(8):
            damaged = bytearray(encoded)
            damaged[position] ^= 1 << bit
            if load_or_decode_error(bytes(damaged)) is not None:
                accepted.append((position, bit))
    assert not accepted, f"PNG flips {accepted[:5]} were accepted"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(ENCODINGS)), data=st.data())
def test_hypothesis_truncations(name: str, data: st.DataObject) -> None:
    CASES_TRIED[0] += 1
    encoded = ENCODINGS[name]
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="cut")
    out = load_or_decode_error(encoded[:cut])
    if name in STRICT_TRUNCATION:
        assert out is None, f"{name} cut to {cut} of {len(encoded)} bytes was accepted"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(ENCODINGS)), data=st.data())
def test_hypothesis_bit_flips(name: str, data: st.DataObject) -> None:
    CASES_TRIED[0] += 1
    encoded = bytearray(ENCODINGS[name])
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(encoded) - 1), st.integers(0, 7)), min_size=1, max_size=4,
                 unique_by=lambda flip: flip[0]),
        label="flips",
    )
    for position, bit in flips:
        encoded[position] ^= 1 << bit
    out = load_or_decode_error(bytes(encoded))
    if name == "png":  # every PNG byte after the signature is covered by a chunk CRC
        assert out is None, f"PNG with flips {flips} was accepted"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(ENCODINGS)), junk=st.binary(min_size=1, max_size=64), data=st.data())
def test_hypothesis_spliced_junk(name: str, junk: bytes, data: st.DataObject) -> None:
    CASES_TRIED[0] += 1
    encoded = ENCODINGS[name]
    start = data.draw(st.integers(0, len(encoded)), label="start")
    stop = data.draw(st.integers(start, min(len(encoded), start + 64)), label="stop")
    load_or_decode_error(encoded[:start] + junk + encoded[stop:])


# ---------------------------------------------------------------- (c) arrays

ARRAY_DTYPES = [np.dtype(d) for d in ("u1", "<u2", ">u2", "?", "f2", "f4", "<f8", ">f8", "i1", "i2", "i4", "i8",
                                      "u4", "u8", "c8", "c16", "M8[s]", "m8[s]")]


@st.composite
def image_like_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of many dtypes and shapes, values at and beyond the edges of each dtype's accepted range."""
    dtype = draw(st.sampled_from(ARRAY_DTYPES))
    ndim = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 3, 4]))
    shape = tuple(draw(st.integers(0, 5 if axis == 2 else 4)) for axis in range(ndim))
    if dtype.kind == "f":
        small = st.floats(0.0, 1.0, width=8 * dtype.itemsize)
        wild = st.floats(allow_nan=True, allow_infinity=True, width=8 * dtype.itemsize)
        elements = st.one_of(small, small, small, wild)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        byte_range = st.integers(0, min(255, int(info.max)))
        elements = st.one_of(byte_range, byte_range, st.integers(int(info.min), int(info.max)))
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


def should_accept(array: np.ndarray) -> bool:
    """The specification, written independently of facemtl.io."""
    kind = array.dtype.kind
    if kind not in "biuf":
        return False
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        return False
    if array.shape[0] == 0 or array.shape[1] == 0:
        return False
    if kind == "b" or (kind == "u" and array.dtype.itemsize <= 2):
        return True
    if kind == "f":
        return bool(np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1)
    return bool(array.min() >= 0 and array.max() <= 255)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=image_like_arrays())
def test_hypothesis_arrays(array: np.ndarray) -> None:
    CASES_TRIED[0] += 1
    before = array.copy()
    try:
        out = load_image(array)
    except InvalidInputError as error:
        assert type(error) is InvalidInputError and "expected" in str(error)
        assert not should_accept(array), f"refused {array.dtype} {array.shape}: {error}"
    else:
        assert should_accept(array), f"accepted {array.dtype} {array.shape}"
        check_image(out)
        assert out.shape[:2] == array.shape[:2] and not np.shares_memory(out, array)
        if array.ndim == 2 or array.shape[2] == 1:
            assert (out == out[:, :, :1]).all()  # greyscale stays grey
    assert array.dtype == before.dtype and array.tobytes() == before.tobytes()  # input untouched


# ---------------------------------------------------------------- report (keep last: pytest runs in file order)


def test_report_case_count(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nfuzz cases tried: {CASES_TRIED[0]}")
    assert CASES_TRIED[0] > 0
