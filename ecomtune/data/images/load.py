"""Image decoding and checks: one way to read an image, as a person sees it, and the checks that find bad images
before training.

Every image ecomtune shows a model goes through `to_rgb` (via `load_rgb`), so training, the benchmark and
prediction see the same pixels: EXIF orientation applied (phone photos are stored sideways), 16-bit and float
greyscale scaled to 8 bits (not clipped to white), transparency composited onto white (product shots on
transparent backgrounds would otherwise turn black). `image_size` reports the size of that displayed image,
because the pixel `boxes` of a record are drawn on what a person sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ExifTags import Base

from ecomtune.errors import Problem

# Pillow's own decompression-bomb limit applies; ecomtune rejects anything over 8x that size outright.
MAX_PIXELS = 8 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
WHITE = (255, 255, 255)
# EXIF orientations 5-8 turn the picture by a quarter: the displayed width is the stored height.
QUARTER_TURNS = frozenset({5, 6, 7, 8})
# Modes whose alpha channel must be composited; other modes may carry a transparent colour in info["transparency"].
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
# Float images carry no bit depth: their values are read on the smallest of these scales that holds them all.
FLOAT_SCALES = (1.0, 255.0, 65535.0)
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth greyscale as 8-bit `L`, scaled over its full range: Pillow's own `convert` clips, so 16-bit
    mid-grey (32768) would come out white. 16-bit modes (`I;16*`) and `I` (Pillow's 32-bit integer mode, which is
    how it holds 16-bit data) are taken as 0..65535, values outside clipped. `F` has no bit depth of its own: it is
    read on the smallest of 0..1 (the float-image convention), 0..255 (Pillow's, when it makes `F` from `L`) and
    0..65535 that holds every value, else on 0..its maximum; NaN and infinities are black. Other modes are
    returned as they are."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        values, top = np.asarray(image, dtype=np.float64), 65535.0
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(values.max(initial=0.0))
        top = next((scale for scale in FLOAT_SCALES if peak <= scale), peak)
    else:
        return image
    return Image.fromarray(np.rint(np.clip(values, 0, top) * (255 / top)).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture as a person sees it, as 8-bit RGB; a new image (the argument is decoded, otherwise unchanged).

    Shapes: any Pillow mode, stored size (w, h) -> mode `RGB`, displayed size (w, h), or (h, w) for EXIF
    orientations 5-8 (see `displayed_size`). In order: EXIF orientation applied; 16-bit (`I;16`, `I;16B`, `I`)
    and float (`F`) greyscale scaled to 8 bits (65535 -> 255, see `_to_8bit`); transparency (an alpha channel,
    or a palette / colour key in `info["transparency"]`) composited onto white; greyscale and bilevel (`L`, `1`)
    repeated into three channels.
    """
    image = _to_8bit(ImageOps.exif_transpose(image))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """The image at `path` as `to_rgb` shows it: the one way ecomtune decodes an image file."""
    with Image.open(path) as image:
        return to_rgb(image)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a person sees the image, i.e. after its EXIF orientation: swapped for orientations 5-8.
    Reads the EXIF block, not the pixels (Pillow decodes a PNG whose header holds no EXIF, to look for a late
    eXIf chunk)."""
    width, height = image.size
    return (height, width) if image.getexif().get(Base.Orientation) in QUARTER_TURNS else (width, height)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the displayed image (see `displayed_size`): the frame a record's pixel boxes refer to."""
    with Image.open(path) as image:
        return displayed_size(image)


def check_image(path: str | Path, max_aspect: float | None = None, family: str = "this model",
                decoded: tuple[tuple[int, int] | None, Problem | None] | None = None,
                ) -> tuple[tuple[int, int] | None, Problem | None]:
    """The image's displayed size (None when unreadable) and what is wrong with it (None when it can be used):
    `decode_check` (or its result `decoded`, when already at hand), then `aspect_problem`. The returned Problem has
    no `where`: the caller knows the record."""
    size, problem = decoded if decoded is not None else decode_check(path)
    return size, problem or aspect_problem(size, max_aspect, family)


def decode_check(path: str | Path) -> tuple[tuple[int, int] | None, Problem | None]:
    """The image's displayed size, or what makes it unusable whatever the model (None when it decodes).

    Every pixel is decoded (`load`), because Pillow's `verify` does not decode JPEG data: a truncated JPEG must
    fail here, with its record's file:line, not mid-training. The pixel count is checked from the header first,
    so a decompression bomb is refused without decoding it. The answer depends on the file alone, which is what
    lets `ecomtune.data.images.checks` cache it by the file's identity and run it in worker processes.
    """
    path = Path(path)
    if not path.is_file():
        return None, Problem(f"file not found at {path}", fix="fix the path or add the file, or drop the record; a "
                             "relative path starts from the source's image_root (a mixture YAML's image_folder), "
                             "else from the data file's folder")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                return None, Problem(f"{width}x{height} pixels exceeds the {MAX_PIXELS} pixel limit",
                                     fix="downscale the image, or drop the record")
            image.load()
            return displayed_size(image), None
    except UNREADABLE as exc:
        return None, Problem(f"unreadable image ({type(exc).__name__}: {exc})",
                             fix="re-export or re-download the file, or drop the record")


def aspect_problem(size: tuple[int, int] | None, max_aspect: float | None, family: str) -> Problem | None:
    """What is wrong with a decoded image's shape for `family`: `max_aspect` is the largest max(w, h) / min(w, h)
    it accepts (Qwen-VL image processors refuse anything beyond 200:1), None for no limit."""
    if size is None or max_aspect is None:
        return None
    ratio = max(size) / max(1, min(size))
    if ratio > max_aspect:
        return Problem(f"aspect ratio {ratio:.4g}:1 exceeds the {max_aspect:g}:1 that {family} takes",
                       fix=f"crop or pad the image to at most {max_aspect:g}:1, or drop the record")
    return None
