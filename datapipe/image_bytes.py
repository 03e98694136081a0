"""What an encoded image file's bytes say without decoding it: its format, its size, and
whether it is truncated. Used by :mod:`datapipe.image_io` before any decoder runs.

Truncation is found from the bytes alone: a JPEG without its end marker, a PNG whose chunks stop
before IEND, a WebP shorter than its RIFF header says, and a JPEG or PNG whose compressed data is
too short for the size its header states (a Huffman-coded JPEG spends at least one bit per 8x8
block, deflate compresses at most 1032:1). Not caught: a JPEG cut short and closed with an end
marker while still holding enough data for its stated size (libjpeg then fills the rest grey),
and arithmetic-coded JPEGs, which have no such bound.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from typing import Union

from PIL import Image

PathLike = Union[str, os.PathLike]

# Leading bytes of the formats we read, for clear error messages.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
}


def sniff_format(data: bytes) -> str | None:
    """Format name from the leading bytes, or None when it is not a format we know."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, name in _SIGNATURES.items():
        if data.startswith(magic):
            return name
    return None


# Markers of the JPEG frames whose size bound holds: Huffman-coded baseline, extended and
# progressive DCT. Arithmetic coding can shrink a flat image below any bound; it is not checked.
_JPEG_HUFFMAN_DCT = (0xC0, 0xC1, 0xC2)
_DEFLATE_MAX_RATIO = 1032  # a 258-byte match costs at least 2 bits
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _kib(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KiB"


def _jpeg_frame(data: bytes) -> tuple[int, int, list[tuple[int, int]], int] | None:
    """(width, height, [(H, V) sampling factor per component], offset of the first scan's data)
    of a Huffman-coded DCT JPEG, read from its markers; None for other JPEGs or odd marker layouts
    (the decoder then has the last word)."""
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if marker in _JPEG_HUFFMAN_DCT and len(segment) >= 6:
            height, width, count = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5]
            factors = [(b >> 4, b & 15) for b in segment[7:6 + 3 * count:3]]
            frame = (width, height, factors) if len(factors) == count else None
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # another frame type
            return None
        if marker == 0xDA:  # start of scan: the entropy-coded data follows the segment
            return None if frame is None else (*frame, pos + 2 + length)
        pos += 2 + length
    return None


def _jpeg_truncation(data: bytes) -> str | None:
    """Why a JPEG is truncated, or None when nothing says so.

    Entropy-coded data cannot contain 0xFFD9 / 0xFFDA (0xFF bytes are stuffed), so an EOI after
    the last SOS means the final scan ends; an EOI of an EXIF thumbnail sits before the main SOS
    and does not count. A file cut short and closed with an EOI is caught by its size: every
    scan codes each 8x8 block of its components with at least one Huffman bit, so the data
    after the first scan header holds at least (blocks of the smallest component) / 8 bytes;
    half of that is the bound checked.
    """
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        return "truncated JPEG data (no end-of-image marker)"
    frame = _jpeg_frame(data)
    if frame is None:
        return None
    width, height, factors, scan = frame
    if not width or not height or not factors or min(min(f) for f in factors) == 0:
        return None  # height from a DNL marker, or invalid factors: left to the decoder
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    blocks = min(_ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
                 for h, v in factors)
    need, have = blocks // 16, len(data) - scan
    if have < need:
        return (f"truncated JPEG data: the header describes a {width}x{height} image, whose compressed "
                f"data takes at least {_kib(need)}, but the file holds {_kib(have)} of it")
    return None


def _png_truncation(data: bytes) -> str | None:
    """Why a PNG is truncated, or None: its chunks must reach IEND, and the IDAT data must be
    at least the raw pixel rows / 1032, deflate's largest compression ratio (with a margin)."""
    pos, idat, header = 8, 0, None
    while True:
        if pos + 8 > len(data):
            return "truncated PNG data: the file ends before its IEND chunk"
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if pos + 12 + length > len(data):
            name = kind.decode("ascii", "replace")
            return f"truncated PNG data: the file ends inside its {name} chunk"
        if kind == b"IHDR" and length >= 13:
            header = data[pos + 8:pos + 21]
        elif kind == b"IDAT":
            idat += length
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or header[9] not in _PNG_CHANNELS:
        return None
    width, height, depth = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big"), header[8]
    raw = height * (1 + _ceil_div(width * _PNG_CHANNELS[header[9]] * depth, 8))  # a filter byte per row
    need = raw // (_DEFLATE_MAX_RATIO + 68)
    if idat < need:
        return (f"truncated PNG data: the header describes a {width}x{height} image, whose compressed "
                f"data takes at least {_kib(need)}, but the file holds {_kib(idat)} of it")
    return None


def truncation(data: bytes, fmt: str | None) -> str | None:
    """Why the encoded image is truncated, found from its bytes without decoding; None if not."""
    if fmt == "JPEG":
        return _jpeg_truncation(data)
    if fmt == "PNG":
        return _png_truncation(data)
    if fmt == "WebP" and len(data) < 8 + int.from_bytes(data[4:8], "little"):
        return (f"truncated WebP data: the file holds {_kib(len(data))} of the "
                f"{_kib(8 + int.from_bytes(data[4:8], 'little'))} its header states")
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the encoded image's header, without decoding; None if unknown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as err:  # PIL refuses to even open it: far above any limit
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        found = re.search(r"\((\d+) pixels\)", str(err))
        return (int(found[1]), 1) if found else (2 ** 31, 1)
    except Exception:  # PIL may not know a format OpenCV decodes; then we cannot tell.
        return None


def image_size(path: PathLike) -> tuple[int, int] | None:
    """(width, height) of an image file from its header (nothing decoded); None if unknown.

    The first 64 KiB hold the header of most files; WebP, TIFFs with their directory at the end
    and JPEGs with large ICC profiles need the whole file (still not decoded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            if not head:
                return None
            size = header_size(head)
            if size is None and len(head) == 1 << 16:
                size = header_size(head + f.read())
            return size
    except OSError:
        return None
