"""The flags of run.py (and run_inshop.py): the parser, its argument types and the checks across flags.

Every bad flag is one argparse error line. The parser lives here, below tools/, so that tools.sweep checks a
run's flags exactly as run.py will.
"""
import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from dataset import DATASETS
from dataset.transforms import DEFAULT_IMAGE_SIZE
from experiment.cli import ArgumentParser, parse_noting_given
from experiment.run_dir import DEFAULT_SAVE_DIR, holds_run, outputs_in, resume_checkpoint, resume_dir
from loss.criterion import LOSS_NAMES, loss_arg
from loss.mdr import LEVELS, MOMENTUM
from loss.sampler import SAMPLERS
from model import BACKBONES
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


METRICS = ("recall", "map_r", "nmi", "ami")


def get_args_parser(dataset: str = "cub200", description: str | None = None) -> argparse.ArgumentParser:
    """run.py's parser (run_inshop.py's with ``dataset`` "inshop"); ``description`` heads its --help."""
    p = ArgumentParser("run_inshop.py" if dataset == "inshop" else "run.py", description)
    p.add_argument("--mode", choices=["train", "eval"], default="train", help="train, or only evaluate --load")
    p.add_argument("--load", default=None, metavar="WEIGHTS",
                   help="model weights to start from or evaluate (authors' .pth files work); --mode eval reads "
                        "the model and data flags not given from the run that wrote them")
    p.add_argument("--dataset", choices=sorted(DATASETS), default=dataset,
                   help="benchmark; 'stanford' and 'sop' are Stanford Online Products, 'folder' your own "
                        "--data DIR with one sub-folder per class (or train/, test/ split folders), 'csv' your "
                        "--data FILE.csv manifest of path,label,split rows (docs/own-data.md)")
    p.add_argument("--backbone", choices=BACKBONES, default="bninception",
                   help="network under the embedding head; timm:NAME is any timm model (pip install timm)")
    p.add_argument("--l2norm", action="store_true", help="L2-normalise embeddings (Triplet+L2Norm)")
    p.add_argument("--lambda-mdr", type=finite_float(False), default=0.0,
                   help="weight of the MDR regulariser, 0 for none")
    p.add_argument("--nu-mdr", type=finite_float(False), default=0.0, help="weight of the sum of squared MDR levels")
    p.add_argument("--mdr-levels", type=finite_float(None), nargs="+", default=list(LEVELS), metavar="LEVEL",
                   help="initial MDR levels, in running standard deviations of the distances; they are learnt "
                        "from there")
    p.add_argument("--mdr-momentum", type=finite_float(False, 1.0), default=MOMENTUM, metavar="M",
                   help="momentum of MDR's running mean and std of the distances, 0 to 1")
    p.add_argument("--loss", choices=LOSS_NAMES, default="triplet",
                   help="base loss: the authors' triplet, or a pytorch-metric-learning loss (pip install "
                        "pytorch-metric-learning) with the library's defaults; MDR adds to any of them")
    p.add_argument("--loss-args", type=loss_arg, nargs="+", default=[], metavar="KEY=VALUE",
                   help="override hyper-parameters of --loss, e.g. margin=0.1 alpha=32")
    p.add_argument("--loss-lr-mult", type=finite_float(True), default=1.0,
                   help="learning rate of the loss's own parameters (proxies, class weights) as a multiple of --lr")
    p.add_argument("--embedding-size", type=bounded_int(1), default=512, help="dimension of the embeddings")
    p.add_argument("--lr", type=finite_float(True), default=1e-4, help="Adam learning rate (weight decay 1e-5)")
    p.add_argument("--lr-decay-epochs", type=bounded_int(1), nargs="+", default=[40, 60, 80],
                   help="epochs after which the learning rate is multiplied by --lr-decay-gamma")
    p.add_argument("--lr-decay-gamma", type=finite_float(True), default=0.2,
                   help="factor of each learning-rate decay")
    p.add_argument("--batch", type=bounded_int(2), default=128,
                   help="training batch size (at least 2 x --num-image-per-class)")
    p.add_argument("--num-image-per-class", "--num_image_per_class", dest="num_image_per_class",
                   type=bounded_int(2), default=4, help="images per class in a training batch (2 or more)")
    p.add_argument("--iter-per-epoch", type=bounded_int(1), default=100, help="training batches per epoch")
    p.add_argument("--epochs", type=bounded_int(1), default=100, help="training epochs, each followed by an "
                   "evaluation (epoch 0 evaluates the initial model)")
    p.add_argument("--recall", type=bounded_int(1), nargs="+", default=[1],
                   help="K values of Recall@K (sorted, duplicates dropped); best.pth is chosen by Recall@1, "
                        "or by the smallest K when 1 is not among them")
    p.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=1,
                   help="seed of python, torch and the batch sampler")
    p.add_argument("--data", default="./dataset/",
                   help="data root (for --dataset folder: the image folder; for csv: the manifest)")
    p.add_argument("--save-dir", default=None,
                   help=f"where best.pth, last.pth, result.txt and logs go (default: {DEFAULT_SAVE_DIR}, or the "
                        f"next free {DEFAULT_SAVE_DIR}_N when it holds another run)")
    p.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the run already in --save-dir")
    p.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto",
                   help="auto picks CUDA, then MPS, then CPU")
    p.add_argument("--workers", type=bounded_int(0), default=min(8, os.cpu_count() or 1),
                   help="data loader processes (default: the CPU count, at most 8)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="start the backbone from random weights")
    p.add_argument("--pretrained", dest="pretrained", metavar="PATH", default=True,
                   help="ImageNet weights file for the backbone (default: download)")
    p.add_argument("--image-size", type=bounded_int(32), default=None,
                   help="crop side; images are resized to size*256/224 first (default: 224, or a timm model's "
                        "resolution)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="distance",
                   help="negative sampling of the triplet loss (the authors use distance-weighted)")
    p.add_argument("--eval-batch", type=bounded_int(1), default=128, help="batch size of embedding extraction")
    p.add_argument("--eval-every", type=bounded_int(1), default=1, metavar="N",
                   help="evaluate every N epochs and always after the last")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=["recall"],
                   help="recall (Recall@K), map_r (MAP@R and R-Precision), nmi and ami (NMI and adjusted "
                        "mutual information of one k-means clustering)")
    p.add_argument("--per-class", action="store_true",
                   help="also report 'class-avg Recall@K' (and 'class-avg MAP@R' with map_r), the mean over "
                        "classes of each class's mean, and write per_class.csv for the last evaluation")
    p.add_argument("--no-download", dest="download", action="store_false", help="never fetch data")
    p.add_argument("--train-classes", type=int, default=None,
                   help="--dataset folder of class folders: the first N classes by name train (default: half)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue a run, in its own folder, from its checkpoint.pth or that folder; the flags "
                        "that define the run must be the same, --epochs may grow")
    p.add_argument("--save-embeddings", action="store_true",
                   help="write the evaluated embeddings and labels to <save-dir>/embeddings.pt")
    p.add_argument("--save-retrievals", type=bounded_int(0), default=0, metavar="N",
                   help="write a PNG grid of N test queries and their top 5 retrievals to the save dir, 0 for none")
    p.add_argument("--worst", action="store_true",
                   help="with --save-retrievals: the N queries of lowest average precision (AP@R), worst first")
    p.add_argument("--plot", action="store_true", help="write training curves and the MDR histogram at the end")
    p.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard logs to <save-dir>/tb (pip install tensorboard)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="decode and resize every image once into DIR and reuse it (identical results, faster)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision for the network (bf16, or fp16 with loss scaling); losses stay float32")
    held_out = p.add_mutually_exclusive_group()
    held_out.add_argument("--val-classes", type=bounded_int(2), default=None, metavar="N",
                          help="hold out N training classes as validation; best_val.pth is the epoch with the "
                               "highest validation Recall@1 (default: the authors' best-on-test selection only)")
    held_out.add_argument("--val-fraction", type=finite_float(True), default=None, metavar="F",
                          help="like --val-classes, holding out the fraction F of the training classes")
    p.add_argument("--strict-data", action="store_true",
                   help="refuse a benchmark tree whose split sizes differ from the canonical ones (default: warn)")
    p.add_argument("--deterministic", action="store_true",
                   help="repeatable CUDA runs for a seed and machine: deterministic algorithms only, "
                        "cudnn.benchmark off (slower; see README)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="IEEE float32 convolutions on Ampere and newer GPUs, as the authors' torch 1.3 computed "
                        "(default: TF32, faster, other rounding; see docs/devices.md)")
    return p


def parse_args(argv: list[str] | None = None, dataset: str = "cub200",
               description: str | None = None) -> argparse.Namespace:
    """Parse and check ``argv`` (``sys.argv[1:]`` when None); abbreviations of the authors' flags keep their meaning."""
    parser = get_args_parser(dataset, description)
    argv = expand_original_abbreviations(sys.argv[1:] if argv is None else argv, parser._option_string_actions)
    return check_args(parser, parse_noting_given(parser, argv))
