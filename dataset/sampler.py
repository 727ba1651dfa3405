"""P x K batch sampler: a fresh class order per batch, K random images per class."""
import random
from collections import defaultdict
from typing import Iterator, Sequence


class PKSampler:
    """Yields ``iter_per_epoch`` batches of dataset indices.

    Each batch visits the classes in a fresh random order and takes
    ``images_per_class`` random images of each (all of them if the class has
    fewer) until it holds ``batch_size`` indices; the batch is cut to that size.
    The sampler owns its random generator, so its state can be saved and resumed.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, images_per_class: int,
                 iter_per_epoch: int, seed: int = 0):
        if batch_size < 2 or images_per_class < 1 or iter_per_epoch < 1:
            raise ValueError(f"need batch >= 2, images per class >= 1 and iterations >= 1, got "
                             f"{batch_size}, {images_per_class}, {iter_per_epoch}")
        self.batch_size = batch_size
        self.images_per_class = images_per_class
        self.iter_per_epoch = iter_per_epoch
        self.rng = random.Random(seed)
        by_class = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[int(label)].append(index)
        self.indices_by_class = dict(sorted(by_class.items()))

    def __len__(self) -> int:
        return self.iter_per_epoch

    def _batch(self) -> list[int]:
        classes = list(self.indices_by_class)
        self.rng.shuffle(classes)
        batch: list[int] = []
        for c in classes:
            members = self.indices_by_class[c]
            batch += self.rng.sample(members, k=min(self.images_per_class, len(members)))
            if len(batch) >= self.batch_size:
                break
        return batch[: self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.iter_per_epoch):
            yield self._batch()

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
