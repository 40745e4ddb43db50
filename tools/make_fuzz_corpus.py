"""Write the crafted image files that tests/test_fuzz_io.py feeds to load_image, with their expected outcomes.

Deterministic (fixed seed, no timestamps): rerunning it rewrites the same corpus. Usage:
    python tools/make_fuzz_corpus.py [--out tests/corpus]
Each file's expected outcome goes into MANIFEST.json: {"expect": "ok", "shape": [h, w, 3]} or
{"expect": "ImageDecodeError"}, optionally with "pixels" ([y, x, r, g, b] checks within "tol") and a "note".
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from facemtl.io import EXIF_TURNS, stored_for_orientation

SEED = 20240611
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "corpus"
MAX_TOTAL_BYTES = 400_000

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode `image` with Pillow into bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG assembled by hand, so the header can say anything (16-bit RGB, huge sizes, zero width)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def quadrants(height: int, width: int) -> Image.Image:
    """An asymmetric upright picture: red top-left, green top-right, blue bottom-left, white bottom-right."""
    pixels = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w], pixels[:h, w:], pixels[h:, :w], pixels[h:, w:] = RED, GREEN, BLUE, WHITE
    return Image.fromarray(pixels)


def quadrant_checks(height: int, width: int) -> list[list[int]]:
    """Pixel checks [y, x, r, g, b] near the centre of each quadrant of `quadrants(height, width)`."""
    ys, xs = (height // 4, 3 * height // 4), (width // 4, 3 * width // 4)
    return [[ys[0], xs[0], *RED], [ys[0], xs[1], *GREEN], [ys[1], xs[0], *BLUE], [ys[1], xs[1], *WHITE]]


def textured(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth gradient with mild noise: small to encode, yet every byte of the encoding matters."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    noise = rng.integers(-12, 13, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def flip_bit(data: bytes, position: int, bit: int) -> bytes:
    """`data` with one bit inverted."""
    out = bytearray(data)
    out[position] ^= 1 << bit
    return bytes(out)


def jpeg_scan_start(data: bytes) -> int:
    """Offset of the first entropy-coded byte after the JPEG's first SOS header."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]


def build(rng: np.random.Generator) -> dict[str, tuple[bytes, dict]]:
    """Every corpus file: name -> (bytes, manifest entry)."""
    files: dict[str, tuple[bytes, dict]] = {}

    def ok(name: str, data: bytes, shape: tuple[int, int], pixels: list | None = None, tol: int = 0,
           note: str | None = None) -> None:
        entry: dict = {"expect": "ok", "shape": [shape[0], shape[1], 3]}
        if pixels:
            entry["pixels"], entry["tol"] = pixels, tol
        if note:
            entry["note"] = note
        files[name] = (data, entry)

    def bad(name: str, data: bytes, note: str) -> None:
        files[name] = (data, {"expect": "ImageDecodeError", "note": note})

    photo = textured(rng, 48, 64)
    jpeg = encode(photo, "JPEG", quality=90)
    png = encode(photo, "PNG")

    # Valid images of every supported format and the awkward modes.
    ok("valid.jpg", jpeg, (48, 64))
    ok("valid.png", png, (48, 64))
    ok("one_pixel.png", encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), (1, 1), [[0, 0, 10, 20, 30]])
    ok("wide_100000x10.png", encode(Image.new("L", (100_000, 10), 200), "PNG", optimize=True), (10, 100_000),
       [[5, 99_999, 200, 200, 200]])
    gray16 = np.array([[0, 32896, 65535, 1000]], dtype=">u2")
    ok("gray16.png", raw_png(4, 1, 16, 0, zlib.compress(b"\x00" + gray16.tobytes(), 9)), (1, 4),
       [[0, 0, 0, 0, 0], [0, 1, 128, 128, 128], [0, 2, 255, 255, 255], [0, 3, 4, 4, 4]])
    rgb16 = np.array([[[65535, 32896, 0], [0, 0, 65535]]], dtype=">u2")
    ok("rgb16.png", raw_png(2, 1, 16, 2, zlib.compress(b"\x00" + rgb16.tobytes(), 9)), (1, 2),
       [[0, 0, 255, 128, 0], [0, 1, 0, 0, 255]], tol=1, note="Pillow reads 16-bit RGB as 8-bit by its high byte")
    ok("cmyk.jpg", encode(Image.new("CMYK", (16, 8), (0, 0, 0, 0)), "JPEG", quality=95), (8, 16),
       [[4, 8, *WHITE]], tol=2)
    palette = Image.new("P", (8, 4), 0)
    palette.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    palette.paste(1, (4, 0, 8, 4))
    ok("palette_transparent.png", encode(palette, "PNG", transparency=0), (4, 8),
       [[2, 1, *WHITE], [2, 6, *BLUE]], note="palette entry 0 is transparent: it shows as white")
    frames = [Image.new("RGB", (12, 10), colour) for colour in (RED, GREEN, BLUE)]
    ok("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
       (10, 12), [[5, 6, *RED]], note="3 frames; the first (red) is returned")
    ok("animated.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
       (10, 12), [[5, 6, *RED]], tol=2)
    ok("valid.bmp", encode(quadrants(20, 30), "BMP"), (20, 30), quadrant_checks(20, 30))
    ok("valid.tiff", encode(quadrants(20, 30), "TIFF"), (20, 30), quadrant_checks(20, 30))
    ok("valid.webp", encode(quadrants(20, 30), "WEBP", lossless=True), (20, 30), quadrant_checks(20, 30))
    ok("valid.gif", encode(quadrants(20, 30), "GIF"), (20, 30), quadrant_checks(20, 30))

    # EXIF orientation 1..8: each decodes to the same upright quadrant picture (48 rows x 64 columns).
    upright = quadrants(48, 64)
    for orientation in EXIF_TURNS:
        stored = Image.fromarray(stored_for_orientation(np.asarray(upright), orientation))
        exif = Image.Exif()
        exif[0x0112] = orientation
        ok(f"exif_orientation_{orientation}.jpg", encode(stored, "JPEG", quality=90, exif=exif), (48, 64),
           quadrant_checks(48, 64), tol=40)
    exif = Image.Exif()
    exif[0x0112] = 9
    ok("exif_orientation_invalid.jpg", encode(upright, "JPEG", quality=90, exif=exif), (48, 64),
       quadrant_checks(48, 64), tol=40, note="orientation 9 does not exist; treated as upright")

    # Not images at all.
    bad("zero_bytes.jpg", b"", "empty file")
    bad("text_named.jpg", b"This is a plain text file, not a JPEG.\n" * 3, "text with an image suffix")
    bad("html_named.png", b"<!DOCTYPE html>\n<html><body><img src='x.png'></body></html>\n", "HTML page saved as .png")

    # Truncations: JPEG is refused even when only its end-of-image marker is missing; PNG likewise.
    for cut in (len(jpeg) - 1, len(jpeg) - 2, len(jpeg) // 2, jpeg_scan_start(jpeg) + 10, 300, 40):
        bad(f"truncated_jpeg_{cut}.jpg", jpeg[:cut], f"first {cut} of {len(jpeg)} bytes")
    for cut in (len(png) - 1, len(png) - 12, len(png) // 2, 100, 33, 20):
        bad(f"truncated_png_{cut}.png", png[:cut], f"first {cut} of {len(png)} bytes")
    webp = encode(photo, "WEBP", quality=80)
    bad("truncated_webp.webp", webp[: len(webp) // 2], "first half of a lossy WebP")
    gif = encode(photo.convert("P"), "GIF")
    bad("truncated_gif.gif", gif[: len(gif) // 2], "first half of a GIF")

    # Bit flips. PNG carries CRCs, so any flip after the signature is caught.
    bad("flip_png_signature.png", flip_bit(png, 1, 4), "signature damaged")
    bad("flip_png_ihdr_width.png", flip_bit(png, 18, 2), "IHDR width changed, CRC no longer matches")
    idat = png.index(b"IDAT") + 4
    idat_len = struct.unpack(">I", png[idat - 8 : idat - 4])[0]
    for position in sorted(rng.choice(np.arange(idat, idat + idat_len), size=4, replace=False).tolist()):
        bad(f"flip_png_idat_{position}.png", flip_bit(png, position, int(rng.integers(8))), "pixel data bit flip")
    bad("flip_png_idat_crc.png", flip_bit(png, idat + idat_len + 1, 0), "only the IDAT checksum damaged")
    # JPEG has no checksum: damaged markers are caught, damaged entropy-coded data decodes to wrong pixels.
    bad("flip_jpeg_soi.jpg", flip_bit(jpeg, 1, 0), "start-of-image marker damaged")
    sof = jpeg.index(b"\xff\xc0")
    bad("flip_jpeg_sof_precision.jpg", flip_bit(jpeg, sof + 4, 0), "sample precision 8 -> 9")
    dht = jpeg.index(b"\xff\xc4")
    bad("flip_jpeg_dht_marker.jpg", flip_bit(jpeg, dht + 1, 0), "Huffman table marker becomes SOF5")
    scan = jpeg_scan_start(jpeg)
    for position in (scan + 40, scan + 200, len(jpeg) - 60):
        ok(f"flip_jpeg_scan_{position}.jpg", flip_bit(jpeg, position, 3), (48, 64),
           note="JPEG has no checksum: libjpeg decodes damaged entropy data to wrong pixels without an error")

    # Sizes: decompression bombs and empty images, refused from the header before any pixel is decoded.
    tiny_idat = zlib.compress(b"\x00" * 64)
    bad("bomb_100000x100000.png", raw_png(100_000, 100_000, 1, 0, tiny_idat), "header claims 10 gigapixels")
    bad("bomb_20000x20000.png", raw_png(20_000, 20_000, 8, 0, tiny_idat), "header claims 400 megapixels")
    bad("zero_width.png", raw_png(0, 10, 8, 0, tiny_idat), "width 0 in IHDR")
    bad("zero_height.png", raw_png(10, 0, 8, 0, tiny_idat), "height 0 in IHDR")
    return files


def write(out: Path) -> int:
    """Write the corpus and MANIFEST.json into `out` (dropping files an older manifest listed); return its size."""
    out.mkdir(parents=True, exist_ok=True)
    files = build(np.random.default_rng(SEED))
    manifest_path = out / "MANIFEST.json"
    if manifest_path.exists():
        for stale in set(json.loads(manifest_path.read_text())) - set(files):
            (out / stale).unlink(missing_ok=True)
    for name, (data, _) in files.items():
        (out / name).write_bytes(data)
    manifest = {name: entry for name, (_, entry) in sorted(files.items())}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(len(data) for data, _ in files.values()) + manifest_path.stat().st_size
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"corpus is {total} bytes, over the {MAX_TOTAL_BYTES} byte budget")
    return total


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder (default: tests/corpus)")
    args = parser.parse_args()
    total = write(args.out)
    print(f"wrote {len(json.loads((args.out / 'MANIFEST.json').read_text()))} files, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
