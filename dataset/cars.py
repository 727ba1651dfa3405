"""Cars-196 from the copies users have: classes 1-98 train, 99-196 test, label = class - 1 in every layout.

Three layouts are detected under ``--data``:

1. the original ``Cars196/car_ims/*.jpg`` + ``Cars196/cars_annos.mat`` (downloaded or extracted for you);
2. the torchvision/Kaggle devkit layout: ``cars_train/``, ``cars_test/`` (each possibly nested once, as
   ``cars_train/cars_train/``), ``cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` in
   ``devkit/`` or beside it;
3. class folders ``train/<class name>/`` and ``test/<class name>/``, the class index being the name's
   position in ``cars_meta.mat`` (in ``devkit/`` or beside it) or, without one, in ``cars196_classes.txt``.

Layouts 2 and 3 are looked for in ``Cars196/`` and ``stanford_cars/``. Whatever the layout, a split holds
the images of both official sets (8,144 + 8,041) whose class is in its half of the 196 classes.
"""
import numbers
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from dataset.benchmark import Benchmark, Remote, folder_samples
from errors import UserError

CARS_IMS_MD5 = "d5c8f0aa497503f355e17dc7886c3f14"
CARS_ANNOS_MD5 = "b407c6086d669747186bd1d764ff9dbc"
_HOSTS = ("http://ai.stanford.edu/~jkrause/car196/", "http://imagenet.stanford.edu/internal/car196/")

NUM_CLASSES = 196
TRAIN_CLASSES = 98
ROOTS = ("Cars196", "stanford_cars")  # folders under --data searched for the devkit and class-folder layouts
CLASS_NAMES_FILE = Path(__file__).with_name("cars196_classes.txt")
ORIGINAL_FILES = ("car_ims", "car_ims.tgz", "cars_annos.mat")  # any of them means the original layout is meant
Sample = tuple[str, int]
# what scipy.io.loadmat raises on a file that is no MAT file, a truncated one or one it cannot parse
_MAT_ERRORS = (MatReadError, ValueError, TypeError, IndexError, KeyError, OSError, EOFError, zlib.error)


def in_split(label: int, split: str) -> bool:
    """Whether 0-based ``label`` belongs to ``split``: labels 0-97 train, 98-195 test."""
    return (label < TRAIN_CLASSES) == (split == "train")


def read_mat(path: Path, variable: str, fix: str) -> Any:
    """Variable ``variable`` of the MAT file ``path`` (squeezed); an error naming the file and ending in ``fix``
    where it is no readable MAT file or lacks the variable."""
    try:
        contents = scipy.io.loadmat(path, squeeze_me=True)
    except _MAT_ERRORS as exc:
        raise UserError(f"cannot read {path} as a MAT file ({exc or type(exc).__name__}); {fix}") from exc
    if variable not in contents:
        raise UserError(f"{path} holds no {variable!r}; {fix}")
    return contents[variable]


def load_annotations(path: Path, fields: tuple[str, ...], fix: str) -> np.ndarray:
    """The ``annotations`` struct array of a Cars-196 ``.mat`` file, flat, holding at least ``fields``."""
    annotations = np.atleast_1d(read_mat(path, "annotations", fix)).ravel()
    missing = [name for name in fields if name not in (annotations.dtype.names or ())]
    if missing:
        raise UserError(f"{path} has no field {missing[0]!r} in its annotations; {fix}")
    return annotations


def class_label(path: Path, index: int, value: Any, fix: str) -> int:
    """The 0-based label of the class field ``value`` of annotation ``index``: an integer from 1 to 196, stored as
    any numeric MAT type; anything else is an error naming the file and the annotation."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer() \
            and 1 <= value <= NUM_CLASSES:
        return int(value) - 1
    raise UserError(f"{path}, annotation {index + 1}: expected a class number from 1 to {NUM_CLASSES}, found "
                    f"{value!r}; {fix}")


def annotated_images(path: Path, name_field: str, fix: str) -> list[Sample]:
    """(image file name, 0-based label) of every annotation of a Cars-196 ``.mat`` file, in file order; a name
    that is no text or a class that is no number from 1 to 196 is an error naming the annotation."""
    samples = []
    for index, ann in enumerate(load_annotations(path, ("class", name_field), fix)):
        name = ann[name_field]
        if not isinstance(name, str) or not name:
            raise UserError(f"{path}, annotation {index + 1}: expected a file name in {name_field!r}, found "
                            f"{name!r}; {fix}")
        samples.append((name, class_label(path, index, ann["class"], fix)))
    return samples


def find_beside_devkit(root: Path, name: str) -> Path | None:
    """``root/devkit/name`` or ``root/name``, whichever is a file first; None if neither is."""
    return next((p for p in (root / "devkit" / name, root / name) if p.is_file()), None)


def name_key(name: str) -> str:
    """A class name as folders spell it: case, spaces, ``-``, ``_`` and ``/`` (not allowed in a folder
    name, so ``Ram C/V`` becomes ``Ram C-V`` or ``Ram CV``) are ignored."""
    return re.sub(r"[\s/_-]", "", name.casefold())


def read_class_names(root: Path) -> tuple[list[str], Path]:
    """The official class names in class order and the file they came from: the devkit's ``cars_meta.mat``
    under ``root`` where there is one, else the list shipped with this project."""
    meta = find_beside_devkit(root, "cars_meta.mat")
    if meta is None:
        lines = CLASS_NAMES_FILE.read_text().splitlines()
        return [line for line in lines if line and not line.startswith("#")], CLASS_NAMES_FILE
    fix = f"replace it with the devkit's cars_meta.mat, or remove it to use {CLASS_NAMES_FILE.name}"
    names = list(np.atleast_1d(read_mat(meta, "class_names", fix)).ravel())
    if len(names) != NUM_CLASSES:
        raise UserError(f"{meta} lists {len(names)} class names, not {NUM_CLASSES}; {fix}")
    junk = next((name for name in names if not isinstance(name, str) or not name_key(name)), None)
    if junk is not None or len({name_key(name) for name in names}) != NUM_CLASSES:
        found = f"found {junk!r}" if junk is not None else "found a name twice"
        raise UserError(f"{meta}: expected {NUM_CLASSES} distinct class names, {found}; {fix}")
    return [str(name) for name in names], meta


@dataclass(frozen=True)
class DevkitCopy:
    """The torchvision/Kaggle layout under ``root``; split membership and labels come from the annotations."""

    root: Path
    name = "torchvision/Kaggle layout"
    folders = ("cars_train", "cars_test")  # the official train and test images, in this order
    annotation_files = ("cars_train_annos.mat", "cars_test_annos_withlabels.mat")
    looked_for = ("cars_train/", "cars_test/") + annotation_files
    notes = {"cars_test_annos_withlabels.mat": ", not the unlabelled cars_test_annos.mat"}

    def present(self) -> bool:
        """Whether any part of this layout is there, so that what is missing should be named."""
        return any((self.root / part).exists() for part in self.folders + ("devkit",))

    def missing(self) -> list[str]:
        """The parts of this layout that are not there, as the error message names them."""
        folders = [f"{folder}/" for folder in self.folders if not (self.root / folder).is_dir()]
        return folders + [f"{name} (in devkit/ or beside it{self.notes.get(name, '')})"
                          for name in self.annotation_files if find_beside_devkit(self.root, name) is None]

    def samples(self, split: str) -> list[Sample]:
        """(image path, label) of both official sets whose class belongs to ``split``, in annotation order."""
        samples = []
        for folder, annotation_file in zip(self.folders, self.annotation_files):
            images = image_folder(self.root, folder)
            path = find_beside_devkit(self.root, annotation_file)
            samples += [(str(images / name), label) for name, label in
                        annotated_images(path, "fname", "replace it with the devkit's copy") if in_split(label, split)]
        return samples


@dataclass(frozen=True)
class ClassFolderCopy:
    """The class-folder layout under ``root``: ``train/`` and ``test/`` of the official split, one folder per
    class named by its official name."""

    root: Path
    name = "class-folder layout"
    looked_for = ("train/<class name>/", "test/<class name>/")
    sets = ("train", "test")

    def present(self) -> bool:
        """Whether ``train/`` or ``test/`` is there."""
        return any((self.root / folder).is_dir() for folder in self.sets)

    def missing(self) -> list[str]:
        """``train/`` or ``test/`` where it is not there."""
        return [f"{folder}/" for folder in self.sets if not (self.root / folder).is_dir()]

    def samples(self, split: str) -> list[Sample]:
        """(image path, label) of the class folders of both sets whose class belongs to ``split``."""
        names, source = read_class_names(self.root)
        index = {name_key(name): i for i, name in enumerate(names)}
        samples = []
        for folder in self.sets:
            for class_dir in sorted(p for p in (self.root / folder).iterdir() if p.is_dir() and p.name[0] != "."):
                label = index.get(name_key(class_dir.name))
                if label is None:
                    raise UserError(f"{class_dir} is not a Cars-196 class name of {source}; rename it to the "
                                    "official name (as in cars_meta.mat) or move it out of the tree")
                if in_split(label, split):
                    samples += folder_samples([class_dir], label)
        return samples


Copy = DevkitCopy | ClassFolderCopy
LAYOUTS: tuple[type[Copy], ...] = (DevkitCopy, ClassFolderCopy)


def image_folder(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name/name`` where a Kaggle copy nests the images one level deeper."""
    nested = root / name / name
    return nested if nested.is_dir() else root / name


def layouts_looked_for() -> str:
    """What each layout needs, for the message on a tree that matches none of them."""
    roots = "{" + ",".join(ROOTS) + "}"
    return "; ".join([f"original: {ROOTS[0]}/car_ims/ + {ROOTS[0]}/cars_annos.mat"]
                     + [f"{layout.name}: {roots}/ with {', '.join(layout.looked_for)}" for layout in LAYOUTS])


def find_copy(root: Path) -> Copy | None:
    """The complete devkit or class-folder copy under ``root``, or None where the original layout applies
    (it is there, it is being provided, or nothing is there). A partial copy with no original files beside
    it is an error that names what is missing."""
    original = root / ROOTS[0]
    if (original / "cars_annos.mat").is_file() and ((original / "car_ims").is_dir()
                                                    or (original / "car_ims.tgz").is_file()):
        return None
    candidates = [layout(root / folder) for folder in ROOTS for layout in LAYOUTS]
    complete = [copy for copy in candidates if not copy.missing()]
    if complete:
        return complete[0]
    partial = [copy for copy in candidates if copy.present()]
    if partial and not any((original / name).exists() for name in ORIGINAL_FILES):
        lacks = "; ".join(f"{copy.root} ({copy.name}) lacks {', '.join(copy.missing())}" for copy in partial)
        raise UserError(f"incomplete Cars-196 copy: {lacks}; add the missing parts from the copy you "
                        "downloaded (see the README's dataset table)")
    return None


class Cars196(Benchmark):
    """Cars-196 in any accepted layout (see the module docstring); label = class - 1.

    In the original layout the samples keep annotation order; in the others they are ordered by class,
    official train set before test set, then annotation or file-name order.
    """

    folder = ROOTS[0]
    title = "Cars-196"
    required = ("cars_annos.mat", "car_ims")
    remotes = (  # the hosts went offline in 2023: a file the user placed is used, never replaced
        Remote("Cars196/car_ims.tgz", tuple(h + "car_ims.tgz" for h in _HOSTS), CARS_IMS_MD5,
               provides="Cars196/car_ims", extract_to="Cars196", by_hand=True),
        Remote("Cars196/cars_annos.mat", tuple(h + "cars_annos.mat" for h in _HOSTS), CARS_ANNOS_MD5,
               provides="Cars196/cars_annos.mat", extract_to=None, by_hand=True),
    )

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 download: bool = False, cache_dir: str | Path | None = None, cache_workers: int | None = None):
        self.copy = find_copy(Path(root))
        if self.copy is not None:
            self.folder = self.copy.root.name
        super().__init__(root, split, transform, download and self.copy is None, cache_dir, cache_workers)

    def is_complete(self) -> bool:
        return self.copy is not None or super().is_complete()

    def prepare_local(self) -> None:
        if self.copy is None:
            super().prepare_local()

    def how_to_get(self) -> str:
        """Advice that fits the tree: restore a copy's files, complete ``car_ims/``, or get what is missing."""
        if self.copy is not None:
            return f"restore the missing files of the {self.copy.name} copy under {self.copy.root}"
        images = self.base / "car_ims"
        if images.is_dir() and (self.base / "cars_annos.mat").is_file():
            return (f"{images} is incomplete, and car_ims.tgz is never extracted over an existing car_ims/: "
                    f"remove that folder and put car_ims.tgz (md5 {CARS_IMS_MD5}) in {self.base} to have it "
                    "extracted, or copy the missing images into it")
        needed = [f"{name} (md5 {md5})" for name, md5, present in (
            ("car_ims.tgz", CARS_IMS_MD5, images.is_dir()),
            ("cars_annos.mat", CARS_ANNOS_MD5, (self.base / "cars_annos.mat").is_file())) if not present]
        extracted = " (car_ims.tgz is then extracted for you)" if not images.is_dir() else ""
        return (f"the original Cars-196 host went offline in 2023 and no maintained mirror serves it: obtain "
                f"{' and '.join(needed)}, put {'them' if len(needed) > 1 else 'it'} in {self.base}, and run again{extracted}; or use a copy in "
                f"another accepted layout (looked for: {layouts_looked_for()})")

    def read_split(self, split: str) -> list[Sample]:
        if self.copy is not None:
            return sorted(self.copy.samples(split), key=lambda sample: sample[1])
        images = annotated_images(self.base / "cars_annos.mat", "relative_im_path",
                                  f"replace it with cars_annos.mat (md5 {CARS_ANNOS_MD5})")
        return [(str(self.base / name), label) for name, label in images if in_split(label, split)]
