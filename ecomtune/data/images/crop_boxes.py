"""Cropping utilities for multi-image items, as pure functions (the paper's targeted-crop recipe).

Boxes are `(x0, y0, x1, y1)` in pixels, half-open (x1, y1 excluded), so a box's width is x1 - x0.
The paper's pipeline: boxes around informative regions -> expanded by a margin -> merged where they
overlap -> one smallest enclosing SQUARE per image (the encoder's input is square) -> perceptual-hash
de-duplication of originals plus crops, which cut images per item from a median of 12 to 4.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ecomtune.errors import DataError, Problem

Box = tuple[int, int, int, int]


def check_box(box: Sequence[float], size: tuple[int, int], where: str = "") -> Box:
    """A box as ints, clipped to the image; an error when it is empty or entirely outside the image."""
    width, height = size
    if len(box) != 4:
        raise DataError("A box needs 4 numbers (x0, y0, x1, y1)", [Problem(f"got {list(box)}", where)])
    x0, y0, x1, y1 = (round(v) for v in box)
    clipped = (max(0, x0), max(0, y0), min(width, x1), min(height, y1))
    if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
        raise DataError(f"Box {list(box)} is empty or outside the {width}x{height} image",
                        [Problem("no pixel of the image is inside it", where)],
                        fix="boxes are (x0, y0, x1, y1) in pixels of the original image, x0 < x1 and y0 < y1")
    return clipped


def trim_background(image: Image.Image, tolerance: int = 12) -> Box:
    """The box of everything that differs from the background colour (the median of the four corners) by
    more than `tolerance` in any channel. A uniform image keeps its full extent."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    corners = np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
    background = np.median(corners, axis=0)
    foreground = (np.abs(pixels - background) > tolerance).any(axis=2)
    rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if rows.size == 0:
        return (0, 0, image.width, image.height)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def expand_box(box: Box, margin: float, size: tuple[int, int]) -> Box:
    """Grow a box on every side by `margin` times its own width/height (0.1 = 10%), clamped to the image."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return (max(0, x0 - dx), max(0, y0 - dy), min(size[0], x1 + dx), min(size[1], y1 + dy))


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def merge_boxes(boxes: Sequence[Box]) -> list[Box]:
    """Replace every group of overlapping boxes by their union, until no two boxes overlap (a union can
    reach boxes that none of its parts touched, hence the repeat)."""
    merged = [tuple(b) for b in boxes]
    while True:
        pair = next(((i, j) for i in range(len(merged)) for j in range(i + 1, len(merged))
                     if _overlap(merged[i], merged[j])), None)
        if pair is None:
            return sorted(merged)  # type: ignore[return-value]
        i, j = pair
        merged[i] = _union(merged[i], merged.pop(j))


def enclosing_square(boxes: Sequence[Box], size: tuple[int, int]) -> Box:
    """The smallest square that covers all boxes, centred on them and shifted (never shrunk) to stay
    inside the image. When the boxes span more than the image's short side, the square is as large as
    the short side and as centred on them as the image allows."""
    if not boxes:
        raise DataError("enclosing_square needs at least one box")
    width, height = size
    x0, y0, x1, y1 = functools.reduce(_union, boxes)
    side = min(max(x1 - x0, y1 - y0), width, height)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0, round(centre_x - side / 2)), width - side)
    top = min(max(0, round(centre_y - side / 2)), height - side)
    return (left, top, left + side, top + side)


def tiles(size: tuple[int, int], tile: int, overlap: float = 0.0) -> list[Box]:
    """Pan-and-scan style square tiles of side `tile` covering the image, with `overlap` (fraction of a
    tile) between neighbours; the last row and column are aligned with the image edge."""
    width, height = size
    tile = min(tile, width, height)
    step = max(1, round(tile * (1 - overlap)))

    def starts(extent: int) -> list[int]:
        positions = list(range(0, max(extent - tile, 0) + 1, step))
        if positions[-1] != extent - tile:
            positions.append(extent - tile)
        return positions

    return [(x, y, x + tile, y + tile) for y in starts(height) for x in starts(width)]


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


def phash(image: Image.Image, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """Perceptual hash: greyscale, resized to 32x32, 2-D DCT, the top-left 8x8 low frequencies compared
    with their median -> a 64-bit integer. Near-identical pictures differ in few bits."""
    n = hash_size * highfreq_factor
    grey = np.asarray(image.convert("L").resize((n, n), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix(n)
    low = (dct @ grey @ dct.T)[:hash_size, :hash_size]
    bits = (low > np.median(low)).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def dedupe(images: Sequence[Image.Image], threshold: int = 6) -> list[int]:
    """Indices of the images to keep, in order: an image is dropped when its pHash is within `threshold`
    bits of an image already kept."""
    kept: list[int] = []
    hashes: list[int] = []
    for index, image in enumerate(images):
        value = phash(image)
        if all(hamming(value, other) > threshold for other in hashes):
            kept.append(index)
            hashes.append(value)
    return kept
