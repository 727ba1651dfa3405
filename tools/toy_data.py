"""Write a tiny image set of class folders for ``run.py --dataset folder``: a first run without any download.

    python -m tools.toy_data DIR [--classes 8] [--images 12] [--size 64] [--seed 0]

Each class is a striped texture of its own orientation; classes 2i and 2i + 1 share their stripes' colour, so
colour alone does not tell them apart. Every image has another phase, stripe width, background colour,
brightness and noise, so a model must learn the orientation and the colour to tell the classes apart (an
untrained ResNet-18 retrieves about 55-70% at Recall@1 on the test half). The pixels depend on --seed alone (PNG files, lossless). DIR must not exist or be empty: the set is
written into a temporary sibling folder and renamed to DIR when complete.
"""
import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from errors import UserError
from experiment.cli import ArgumentParser, exit_status
from experiment.flags import bounded_int

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 40),
           "magenta": (200, 50, 200), "cyan": (40, 200, 210), "orange": (240, 130, 30), "grey": (130, 130, 130)}


def class_names(classes: int) -> list[str]:
    """``NN_colour_ANGLEdeg`` for each class, in sorted order (the order --dataset folder numbers them in)."""
    colours = list(COLOURS)
    return [f"{c:02d}_{colours[colour_of(c)]}_{angle_of(c, classes):03d}deg" for c in range(classes)]


def colour_of(c: int) -> int:
    """Index into COLOURS of class ``c``: classes 2i and 2i + 1 share a colour and differ in orientation only."""
    return (c // 2) % len(COLOURS)


def angle_of(c: int, classes: int) -> int:
    """The stripe orientation of class ``c`` in whole degrees, the classes spread evenly over 0-180."""
    return round(180 * c / classes)


def toy_image(c: int, classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 image of class ``c``: stripes at its angle, in its colour over a dimmed colour
    drawn from ``rng``, with a random phase, width, brightness and noise drawn from ``rng``."""
    colours = list(COLOURS.values())
    fore = np.array(colours[colour_of(c)], dtype=np.float64)
    back = np.array(colours[rng.integers(len(colours))], dtype=np.float64) * 0.5
    theta = math.radians(angle_of(c, classes) + rng.uniform(-4, 4))
    period = size / rng.uniform(4.0, 6.0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    wave = np.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period + rng.uniform(0, 2 * math.pi))
    mix = (wave > 0)[..., None].astype(np.float64)
    pixels = (mix * fore + (1 - mix) * back) * rng.uniform(0.7, 1.2) + rng.normal(0, 12, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_toy_set(out: Path, classes: int = 8, images: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Write ``out/<class>/<NN>.png``: ``images`` images of each of ``classes`` classes; returns ``out``.

    Raises UserError when ``out`` is a file or a folder that holds anything.
    """
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder (it may hold your files); name a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for c, name in enumerate(class_names(classes)):
            (staged / name).mkdir()
            for i in range(images):
                Image.fromarray(toy_image(c, classes, size, rng)).save(staged / name / f"{i:02d}.png")
        if out.is_dir():
            out.rmdir()
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("tools.toy_data", __doc__)
    p.add_argument("dir", metavar="DIR", help="the folder to create (absent or empty)")
    p.add_argument("--classes", type=bounded_int(4), default=8,
                   help="number of classes (--dataset folder trains on the first half and tests on the rest)")
    p.add_argument("--images", type=bounded_int(2), default=12, help="images per class")
    p.add_argument("--size", type=bounded_int(32), default=64, help="image side in pixels")
    p.add_argument("--seed", type=bounded_int(0), default=0, help="the pixels depend on it alone")
    return p


def main(args: argparse.Namespace) -> Path:
    """Write the set ``args`` describe and say where it is."""
    out = write_toy_set(Path(args.dir), args.classes, args.images, args.size, args.seed)
    print(f"[Toy data] wrote {out}: {args.classes} classes of {args.images} {args.size}x{args.size} images; "
          f"train on it with run.py --dataset folder --data {out}")
    return out


def cli(argv: list[str] | None = None) -> int:
    return exit_status(lambda: main(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())
