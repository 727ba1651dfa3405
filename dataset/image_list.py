"""A dataset of (image path, label) samples, the base of every benchmark."""
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from dataset import cache
from dataset.cached_transform import CachedTransform
from dataset.decode import REPLACE_OR_REMOVE, load_rgb

from errors import UserError


class ImageList(Dataset):
    """Indexing returns (transformed image, int label); ``.samples`` lists (path, label).

    With ``cache_dir``, the first (resize) step of ``transform`` is served from
    a decode-once cache named ``cache_name`` (see ``dataset.cache``), built by
    ``cache_workers`` processes (None: one per CPU), and only the remaining
    steps run per sample; outputs are bit-identical.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None,
                 cache_dir: str | Path | None = None, cache_name: str = "images", cache_workers: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.cache_path = None
        self._cache = None
        if cache_dir is not None:
            side = cache.cached_resize_side(transform)
            self.cache_path = cache.prepare(self.samples, side, cache_dir, cache_name, cache_workers,
                                            self.unreadable_advice())
            self.after_cache = CachedTransform(transform.transforms[1:])
            cache.open_cache(self.cache_path, len(self.samples))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None  # each worker maps the file itself instead of receiving a copy
        return state

    @classmethod
    def evaluation_splits(cls, root: str | Path) -> tuple[str, ...]:
        """The splits a dataset of this kind read from ``root`` evaluates: ("test",) for self-retrieval or
        ("query", "gallery"), and then "val" when the data has a validation split of its own."""
        return ("test",)

    def unreadable_advice(self) -> str:
        """What the user can do about an image of this dataset that cannot be decoded."""
        return REPLACE_OR_REMOVE

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def class_order(self) -> list[int]:
        """Class ids in the order of the authors' ``class_to_idx``: sorted, as ImageFolder lists them."""
        return sorted(set(self.labels))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """The sample at ``index``; an ``(index, seed)`` pair draws its random augmentation from ``seed``.

        With a seed the transform runs on torch's default CPU generator seeded
        with it (as ``torch.manual_seed`` seeds it), so a sample's crop and flip do
        not depend on which process loads it; the generator's state is restored
        after, so the caller's random stream is left untouched. Seeding the one
        generator the transforms use costs 2 us, where ``fork_rng`` with
        ``torch.manual_seed`` costs over 100 (``bench/train_speed.py``).
        """
        if not isinstance(index, tuple):
            return self._load(index)
        index, seed = index
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self._load(index)
        finally:
            generator.set_state(state)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        if self.cache_path is not None:
            if self._cache is None:
                self._cache = cache.open_cache(self.cache_path, len(self.samples))
            return self.after_cache(self._cache[index]), label
        image = load_rgb(path, self.unreadable_advice())
        return (self.transform(image) if self.transform else image), label


def check_files_exist(root: Path, samples: Sequence[tuple[str, int]], hint: str) -> None:
    """Raise naming the first missing image of ``samples`` and how to get the data."""
    missing = [path for path, _ in samples if not Path(path).is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) listed under {root} are missing, e.g. {missing[0]}; {hint}")


def own_positions(eval_sets: dict) -> torch.Tensor | None:
    """(Q,) int64 index in ``eval_sets["gallery"]`` of each query's own image (the same path: a manifest row
    that is both query and gallery), -1 for none; None when no query is in the gallery or there is no gallery."""
    if "query" not in eval_sets or "gallery" not in eval_sets:
        return None
    where = {path: i for i, (path, _) in enumerate(eval_sets["gallery"].samples)}
    own = torch.tensor([where.get(path, -1) for path, _ in eval_sets["query"].samples], dtype=torch.int64)
    return own if bool((own >= 0).any()) else None
