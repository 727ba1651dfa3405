"""Decoding image files, with errors that name the file."""
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from errors import UserError


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as RGB; a clear error naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise UserError(f"cannot decode image {path}: {exc}; replace or remove this file") from exc
