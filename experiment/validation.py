"""Honest model selection: training classes held out as validation (Musgrave et al., ECCV 2020).

With --val-classes N (or --val-fraction F) the run trains on the other
training classes, evaluates the held-out ones every epoch, and best_val.pth is
the epoch with the highest validation Recall@1; no test image takes part in
that choice. The held-out classes are drawn with a fixed seed, so every seed of
a sweep trains and validates on the same classes.
"""
import argparse
import random
from typing import Callable, Sequence

from torch.utils.data import Dataset

from errors import UserError

VAL_PREFIX = "val "
SPLIT_SEED = 0


class ClassSubset(Dataset):
    """The samples of ``base`` whose label is in ``classes``, with ``samples``, ``labels`` and ``class_order``."""

    def __init__(self, base: Dataset, classes: set[int]):
        self.base = base
        self.indices = [i for i, (_, label) in enumerate(base.samples) if label in classes]
        self.classes = classes

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [self.base.samples[i] for i in self.indices]

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def class_order(self) -> list[int]:
        return [c for c in self.base.class_order if c in self.classes]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | tuple[int, int]):
        """The sample at ``index`` of the subset, or at ``(index, augmentation seed)``."""
        if isinstance(index, tuple):
            return self.base[(self.indices[index[0]], index[1])]
        return self.base[self.indices[index]]


def held_out_count(classes: int, val_classes: int | None, val_fraction: float | None) -> int:
    """How many of ``classes`` training classes --val-classes / --val-fraction hold out (0: none)."""
    if val_classes is None and val_fraction is None:
        return 0
    count = val_classes if val_classes is not None else round(classes * val_fraction)
    flag = f"--val-classes {val_classes}" if val_classes is not None else f"--val-fraction {val_fraction}"
    if not 2 <= count <= classes - 2:
        raise UserError(f"{flag} holds out {count} of the {classes} training classes; validation and training "
                        f"each need at least 2 classes: hold out between 2 and {classes - 2}")
    return count


def validation_classes(class_order: Sequence[int], count: int) -> set[int]:
    """``count`` classes drawn with a fixed seed from the sorted ``class_order``."""
    return set(random.Random(SPLIT_SEED).sample(sorted(class_order), count))


def split_validation(args: argparse.Namespace, train: Dataset, train_for_eval: Callable[[], Dataset],
                     own: Dataset | None = None) -> tuple[Dataset, Dataset | None]:
    """(training part, validation part or None) of the train split ``train``.

    ``train_for_eval`` builds the same split with the test transform, from
    which the validation part is taken. ``own`` is the data's own validation
    split (a manifest's val rows): it is the validation part, ``train`` is kept
    whole, and --val-classes / --val-fraction are refused.
    """
    if own is not None:
        if args.val_classes is not None or args.val_fraction is not None:
            flag = "--val-classes" if args.val_classes is not None else "--val-fraction"
            raise UserError(f"{flag} holds out training classes, but {args.data} has a val split of its own "
                            f"({len(own)} images), which selects best_val.pth: drop {flag}")
        print(f"[Validation] the val split of {args.data} ({len(own)} images of {len(set(own.labels))} classes) "
              "selects best_val.pth")
        return train, own
    count = held_out_count(len(train.class_order), args.val_classes, args.val_fraction)
    if not count:
        return train, None
    held_out = validation_classes(train.class_order, count)
    kept = ClassSubset(train, set(train.class_order) - held_out)
    print(f"[Validation] holding out {count} of {len(train.class_order)} training classes "
          f"({len(kept)} training images remain)")
    return kept, ClassSubset(train_for_eval(), held_out)


def val_selected_epoch(history: list[dict], key: str) -> int | None:
    """The epoch of ``history`` with the highest validation ``key`` (ties: the earliest); None without validation."""
    scored = [r for r in history if VAL_PREFIX + key in r]
    if not scored:
        return None
    return max(scored, key=lambda r: (r[VAL_PREFIX + key], -r["epoch"]))["epoch"]


def prefixed(results: dict[str, float]) -> dict[str, float]:
    """Validation results under their metrics.jsonl names ("val Recall@1", ...)."""
    return {VAL_PREFIX + name: value for name, value in results.items()}
