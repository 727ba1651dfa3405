"""P x K batch sampler that draws exactly the batches of the authors' ``MImagesPerClassSampler``."""
import hashlib
import random
from collections import defaultdict
from typing import Iterator, Sequence

from errors import UserError


class PKSampler:
    """Yields ``iter_per_epoch`` batches of dataset indices, seed for seed the original's.

    Per batch: ``rng.sample(class_order, k=len(class_order))`` gives a fresh
    class order; then, class after class, ``rng.sample(indices_of_class,
    k=min(images_per_class, n))`` until the batch holds ``batch_size`` indices,
    cut to that size. ``indices_of_class`` lists the class's dataset indices in
    dataset order. The original made the same calls on Python's global
    ``random`` seeded with ``--seed``; a private ``random.Random(seed)`` gives
    the same stream and can be saved and resumed.

    ``class_order`` is the order of the original's ``class_to_idx`` values
    (each dataset's ``.class_order``); None means the sorted class ids.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, images_per_class: int,
                 iter_per_epoch: int, seed: int = 0, class_order: Sequence[int] | None = None):
        if batch_size < 2 or images_per_class < 1 or iter_per_epoch < 1:
            raise UserError(f"need --batch >= 2, --num-image-per-class >= 1 and --iter-per-epoch >= 1, got "
                            f"{batch_size}, {images_per_class}, {iter_per_epoch}")
        self.batch_size = batch_size
        self.images_per_class = images_per_class
        self.iter_per_epoch = iter_per_epoch
        self.rng = random.Random(seed)
        self.indices_by_class = indices_by_class(labels)
        self.class_order = checked_class_order(class_order, self.indices_by_class)
        capacity = sum(min(images_per_class, len(m)) for m in self.indices_by_class.values())
        self.batch_len = min(batch_size, capacity)
        if capacity < batch_size:
            print(f"[Warning] the {len(self.class_order)} training classes give batches of {capacity} images "
                  f"with --num-image-per-class {images_per_class}, fewer than --batch {batch_size}; every batch "
                  f"holds {capacity}")

    def __len__(self) -> int:
        return self.iter_per_epoch

    def _batch(self) -> list[int]:
        batch: list[int] = []
        for c in self.rng.sample(self.class_order, k=len(self.class_order)):
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


def augmentation_seed(seed: int, epoch: int, iteration: int, position: int) -> int:
    """A 63-bit torch seed for the sample at ``position`` of the global batch ``iteration`` of ``epoch``."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{iteration}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededShards:
    """The batches of a ``PKSampler``, as this rank's slice of ``(index, augmentation seed)`` pairs.

    Every rank draws the same global batch; rank ``r`` of ``world`` loads the
    ``r``-th of ``world`` equal contiguous slices. Each sample's augmentation
    seed comes from (seed, epoch, iteration, position in the global batch), so
    the images are the same for any number of DataLoader workers or ranks.
    Call ``set_epoch`` before each epoch.
    """

    def __init__(self, sampler: PKSampler, seed: int, rank: int = 0, world: int = 1):
        if sampler.batch_len % world:
            raise UserError(f"a batch of {sampler.batch_len} images does not split evenly over {world} "
                            f"processes; choose --batch and --num-image-per-class so that every batch is a "
                            f"multiple of {world} (the training set may have too few classes for --batch)")
        self.sampler, self.seed, self.rank, self.world = sampler, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration, batch in enumerate(self.sampler):
            size = len(batch) // self.world
            start = self.rank * size
            yield [(index, augmentation_seed(self.seed, self.epoch, iteration, start + offset))
                   for offset, index in enumerate(batch[start:start + size])]

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def indices_by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    """{class id: its dataset indices in dataset order}."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    return dict(by_class)


def checked_class_order(class_order: Sequence[int] | None, by_class: dict[int, list[int]]) -> list[int]:
    """``class_order`` as a list, or the sorted class ids; it must name every class exactly once."""
    if class_order is None:
        return sorted(by_class)
    order = [int(c) for c in class_order]
    if len(order) != len(by_class) or set(order) != set(by_class):
        raise ValueError(f"class_order must list each of the {len(by_class)} class ids once; got {len(order)} "
                         f"entries, {len(set(order) ^ set(by_class))} differing from the labels")
    return order
