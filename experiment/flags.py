"""Argument types and checks of run.py: every bad flag is one argparse error line."""
import argparse
import math
from pathlib import Path
from typing import Callable, Sequence

from dataset.transforms import DEFAULT_IMAGE_SIZE
from experiment.run_dir import holds_run, outputs_in, resume_checkpoint, resume_dir
from model.timm_backbone import is_timm

ORIGINAL_FLAGS = ("--mode", "--load", "--dataset", "--backbone", "--l2norm", "--lambda-mdr", "--nu-mdr",
                  "--embedding-size", "--lr", "--lr-decay-epochs", "--lr-decay-gamma", "--batch",
                  "--num-image-per-class", "--iter-per-epoch", "--epochs", "--recall", "--seed", "--data",
                  "--save-dir")


def expand_original_abbreviations(argv: Sequence[str], known: Sequence[str]) -> list[str]:
    """Spell out abbreviations that named one flag of the authors' parser, e.g. ``--save`` -> ``--save-dir``.

    New flags made some of them ambiguous for argparse (``--save``, ``--num``,
    ``--m``); they keep their original meaning. ``known`` lists this parser's
    option strings, which are never rewritten.
    """
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        matches = [f for f in ORIGINAL_FLAGS if f.startswith(name)]
        if name.startswith("--") and name not in known and len(matches) == 1:
            arg = matches[0] + sep + value
        out.append(arg)
    return out


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (and <= ``high``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def finite_float(positive: bool | None, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float, > 0 if ``positive``, >= 0 if False, of any sign if None; <= ``high``."""
    low = {True: "> 0", False: ">= 0", None: ""}[positive]

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (not math.isfinite(value) or (positive is not None and value < 0) or (positive and value == 0)
                or (high is not None and value > high)):
            bounds = " and ".join(b for b in (low, f"<= {high:g}" if high is not None else "") if b)
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}".rstrip() + f", got {text}")
        return value
    parse.__name__ = "number"
    return parse


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Checks across flags; ``--recall`` values are de-duplicated and sorted; ``--image-size`` defaults to
    224 except for timm backbones, whose resolution the transforms take from timm."""
    if args.batch < 2 * args.num_image_per_class:
        parser.error(f"--batch {args.batch} must hold at least two classes of --num-image-per-class "
                     f"{args.num_image_per_class}, i.e. be at least {2 * args.num_image_per_class}")
    if args.resume is not None and not resume_checkpoint(args.resume).is_file():
        parser.error(no_checkpoint(args.resume))
    if args.mode == "eval" and args.resume is not None:
        parser.error(f"--resume continues training; to evaluate a run use --mode eval --load "
                     f"{resume_dir(args.resume) / 'best.pth'}")
    if args.save_dir == "":
        parser.error("--save-dir must not be empty; name a folder, e.g. --save-dir ./result")
    if (args.resume is not None and args.save_dir is not None
            and Path(args.save_dir).resolve() != resume_dir(args.resume).resolve()):
        parser.error(f"--resume writes into the run it continues ({resume_dir(args.resume)}); "
                     f"drop --save-dir {args.save_dir}")
    if args.worst and not args.save_retrievals:
        parser.error("--worst chooses the queries of --save-retrievals N; add --save-retrievals N")
    args.recall = sorted(set(args.recall))
    if args.image_size is None and not is_timm(args.backbone):
        args.image_size = DEFAULT_IMAGE_SIZE
    return args


def no_checkpoint(resume: str) -> str:
    """The error of ``--resume`` naming no checkpoint; a folder that a run stopped before its first
    checkpoint left is said to be one a new run may take."""
    folder = resume_dir(resume)
    if folder.is_dir() and outputs_in(folder) and not holds_run(folder):
        return (f"--resume {resume}: no checkpoint there; the run in {folder} stopped before its first checkpoint "
                f"and left only {' and '.join(outputs_in(folder))}, so there is nothing to continue: start it again "
                f"with --save-dir {folder} instead of --resume (the new run takes the folder)")
    return (f"--resume {resume}: no checkpoint there; name a run folder holding checkpoint.pth, or the "
            "checkpoint file")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations that ``argv`` sets explicitly (``parser`` is left as it was)."""
    defaults = [(action, action.default) for action in parser._actions]
    for action, _ in defaults:
        action.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults:
            action.default = default
