"""A dataset of (image path, label) samples, the base of every benchmark."""
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from errors import UserError


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as RGB; a clear error naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise UserError(f"cannot decode image {path}: {exc}; replace or remove this file") from exc


class ImageList(Dataset):
    """Indexing returns (transformed image, int label); ``.samples`` lists (path, label)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), label


def check_files_exist(root: Path, samples: Sequence[tuple[str, int]], hint: str) -> None:
    """Raise naming the first missing image of ``samples`` and how to get the data."""
    missing = [path for path, _ in samples if not Path(path).is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) listed under {root} are missing, e.g. {missing[0]}; {hint}")
