"""Image loading and checks: pure functions over files, so that bad images are found before training."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Pillow's own decompression-bomb limit applies; ecomtune rejects anything over 8x that size outright.
MAX_PIXELS = 8 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


def check_image(path: Path) -> str | None:
    """None when `path` is a readable image, else what is wrong with it (one short sentence)."""
    if not path.is_file():
        return f"file not found at {path}"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                return f"{width}x{height} pixels exceeds the {MAX_PIXELS} pixel limit"
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB (palette, alpha and greyscale images all become 3-channel)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size
