"""Decoding image files, with errors that name the file."""
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from errors import UserError

# what to do about an unreadable image when the user may simply remove it (their own image folder)
REPLACE_OR_REMOVE = "replace it with a readable image or remove it"


def load_rgb(path: str | Path, advice: str = REPLACE_OR_REMOVE) -> Image.Image:
    """The image at ``path`` as RGB; a clear error naming the file and ending in ``advice`` when it
    cannot be decoded or is so large that PIL suspects a decompression bomb (its warning counts too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"image {path} is too large to decode safely ({exc}); {advice}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise UserError(f"cannot decode image {path}: {exc}; {advice}") from exc
