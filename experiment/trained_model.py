"""A model from a weights file: the flags its run recorded, the model built and loaded, images embedded as
evaluation embeds them.

Any file ``--load`` accepts works (our best.pth, last.pth, checkpoint.pth, the
authors' released .pth, a DataParallel state_dict). When it comes from one of
our runs (a checkpoint carrying its flags, or a file in a run folder holding
config.json), the model flags, and for evaluation the data flags, are read from
there as ``--resume`` reads them; a flag given on the command line wins, and
one that differs from the run's is announced in one line.
"""
import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.image_source import SourceImages
from dataset.transforms import build_transforms, model_input, resize_size
from experiment.config import CONFIG_NAME
from experiment.device import amp_settings, select_device
from experiment.extraction import iterate_embeddings
from experiment.flags import bounded_int
from experiment.guards import sha256_file
from experiment.resume import adopt_saved_flags
from model import BACKBONES, build_model
from model.checkpoint import load_model_weights, read_weights_file

MODEL_FLAGS = ("backbone", "embedding_size", "l2norm", "image_size")
DATA_FLAGS = ("dataset", "data", "train_classes")
_PREPOSITIONS = {"image_size": "at", "dataset": "on", "data": "on"}


@dataclass(frozen=True)
class RunFlags:
    """The flags a run recorded for a weights file, and the file they were read from."""

    flags: dict
    source: Path


def _config_flags(folder: Path) -> RunFlags | None:
    """The flags of ``folder/config.json`` with --data as the resolved root it recorded; None without one."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"[Flags] cannot read {path} ({exc}); the flags given (or the defaults) apply")
        return None
    if not isinstance(config, dict) or not isinstance(config.get("flags"), dict):
        return None
    flags = dict(config["flags"])
    root = (config.get("data") or {}).get("root") if isinstance(config.get("data"), dict) else None
    if root:
        flags["data"] = root
    return RunFlags(flags, path)


def recorded_flags(weights: Path, checkpoint: object) -> RunFlags | None:
    """The flags of the run that wrote ``weights`` (already read as ``checkpoint``): the checkpoint's own
    when it carries them, else its folder's config.json; None for a file from elsewhere."""
    from_folder = _config_flags(weights.parent)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("args"), dict):
        flags = dict(checkpoint["args"])
        if from_folder is not None and "data" in from_folder.flags:
            flags["data"] = from_folder.flags["data"]
        return RunFlags(flags, weights)
    return from_folder


def _flag_text(name: str, value: object) -> str:
    """``--flag value`` (``--flag`` alone for a switch that is on)."""
    flag = f"--{name.replace('_', '-')}"
    return flag if value is True else f"{flag} {value}"


def _difference(name: str, given: object, saved: object, verb: str) -> str:
    """E.g. "evaluating at --image-size 224; the run trained at 64"."""
    if isinstance(given, bool):
        return f"{verb} with {_flag_text(name, True)}; the run trained without it"
    word = _PREPOSITIONS.get(name, "with")
    return f"{verb} {word} {_flag_text(name, given)}; the run trained {word} {saved}"


def adopt_run_flags(args: argparse.Namespace, run: RunFlags | None, names: Sequence[str], verb: str) -> list[str]:
    """Give the flags ``names`` that the command line did not set (``args._given``) the run's values, as
    ``--resume`` does; returns the lines to print: what was read, and each given flag that differs."""
    if run is None:
        return []
    given = getattr(args, "_given", set())
    saved = {k: run.flags[k] for k in names if k in run.flags and hasattr(args, k)}
    adopt_saved_flags(args, {"args": saved})
    adopted = [_flag_text(k, v) for k, v in saved.items() if k not in given and v is not None and v is not False]
    lines = [f"[Flags] read from {run.source}: {' '.join(adopted)}"] if adopted else []
    return lines + [_difference(k, getattr(args, k), v, verb) for k, v in saved.items()
                    if k in given and getattr(args, k) != v]


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--load and the flags that define a model, with run.py's meanings and defaults."""
    parser.add_argument("--load", required=True, metavar="WEIGHTS",
                        help="weights: a run's best.pth, last.pth or checkpoint.pth (its flags are read from the run), "
                             "the authors' .pth or a DataParallel state_dict")
    parser.add_argument("--backbone", choices=BACKBONES, default="bninception",
                        help="network under the embedding head (default: the run's, else bninception)")
    parser.add_argument("--embedding-size", type=bounded_int(1), default=512,
                        help="dimension of the embeddings (default: the run's, else 512)")
    parser.add_argument("--l2norm", action="store_true",
                        help="L2-normalised embeddings (Triplet+L2Norm; default: the run's, else off)")
    parser.add_argument("--image-size", type=bounded_int(32), default=None,
                        help="crop side (default: the run's, else 224 or a timm model's resolution)")


def add_extraction_flags(parser: argparse.ArgumentParser, amp: bool = True) -> None:
    """--device, --workers, --eval-batch (and --amp) with run.py's meanings and defaults."""
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto",
                        help="auto picks CUDA, then MPS, then CPU")
    parser.add_argument("--workers", type=bounded_int(0), default=min(8, os.cpu_count() or 1),
                        help="data loader processes (default: the CPU count, at most 8)")
    parser.add_argument("--eval-batch", type=bounded_int(1), default=128, help="images embedded at once")
    if amp:
        parser.add_argument("--amp", action="store_true",
                            help="mixed precision for the network (bf16, or fp16); embeddings stay float32")


@dataclass(frozen=True)
class ModelSpec:
    """What a model's embeddings depend on: the weights file (and its sha256) and the flags that build and feed it."""

    weights: Path
    sha256: str
    backbone: str
    embedding_size: int
    l2norm: bool
    image_size: int  # the crop side, resolved

    def flags(self) -> dict:
        return {"backbone": self.backbone, "embedding_size": self.embedding_size, "l2norm": self.l2norm,
                "image_size": self.image_size}

    def transform(self) -> dict:
        """The authors' test transform of the images, as index.json records it."""
        norm = model_input(self.backbone, self.image_size)[1]
        side = resize_size(self.image_size)
        return {"resize": [side, side], "interpolation": "LANCZOS", "center_crop": self.image_size,
                "bgr255": norm.bgr255, "mean": norm.mean.flatten().tolist(),
                "std": None if norm.std is None else norm.std.flatten().tolist()}


def spec_from_flags(weights: Path, flags: dict) -> ModelSpec:
    """The spec of ``weights`` with the model flags ``flags`` (image size None: the backbone's default)."""
    side = model_input(flags["backbone"], flags["image_size"])[0]
    return ModelSpec(weights.resolve(), sha256_file(weights), flags["backbone"], flags["embedding_size"],
                     flags["l2norm"], side)


def adopt_flags_of_weights(args: argparse.Namespace, names: Sequence[str], verb: str) -> tuple[list[str], object]:
    """(``adopt_run_flags``'s lines for the run of ``--load``, the weights file's contents)."""
    weights = Path(args.load)
    checkpoint = read_weights_file(weights)
    return adopt_run_flags(args, recorded_flags(weights, checkpoint), names, verb), checkpoint


def spec_from_args(args: argparse.Namespace, verb: str) -> tuple[ModelSpec, object]:
    """(the spec of ``--load`` with the model flags of its run unless given, the file's contents), the lines
    about the flags printed. ``verb`` ("indexing", "exporting") starts the line of a flag that differs."""
    lines, checkpoint = adopt_flags_of_weights(args, MODEL_FLAGS, verb)
    for line in lines:
        print(line)
    return spec_from_flags(Path(args.load), {k: getattr(args, k) for k in MODEL_FLAGS}), checkpoint


def load_model(spec: ModelSpec, device: torch.device, checkpoint: object | None = None) -> nn.Module:
    """The embedding model of ``spec`` on ``device`` in eval mode, loaded strictly; a file that does not fit the
    flags is the one-line error of ``--load``."""
    model = build_model(spec.backbone, spec.embedding_size, spec.l2norm, pretrained=False)
    load_model_weights(model, spec.weights, checkpoint)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


@dataclass
class Embedded:
    """One batch of embedded files: their positions in the list given and their (b, D) float32 embeddings."""

    positions: torch.Tensor  # (b,) int64
    embeddings: torch.Tensor  # (b, D) float32, on the CPU


class Embedder:
    """Embeds image files with a loaded model exactly as evaluation does: the authors' test transform, batches
    on the device (``--workers``, ``--eval-batch``, ``--amp``), an unreadable image skipped with one line."""

    def __init__(self, spec: ModelSpec, device: str = "auto", workers: int = 0, batch: int = 128,
                 amp: bool = False, checkpoint: object | None = None):
        self.spec = spec
        self.device = select_device(device)
        self.model = load_model(spec, self.device, checkpoint)
        self.normalize = model_input(spec.backbone, spec.image_size)[1].finish
        self.transform = build_transforms(spec.backbone, spec.image_size, uint8=True)[1]
        self.workers, self.batch = workers, batch
        self.amp_dtype = amp_settings(amp, self.device)[0]
        self.unreadable: list[str] = []

    def embed(self, paths: Sequence[Path], desc: str = "Embedding") -> Iterator[Embedded]:
        """Batches of the embeddings of ``paths``, in order; each unreadable image is printed, listed in
        ``self.unreadable`` and left out."""
        side = self.spec.image_size
        images = SourceImages(paths, self.transform, torch.zeros(3, side, side, dtype=torch.uint8))
        loader = DataLoader(images, batch_size=self.batch, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        for embeddings, positions in iterate_embeddings(self.model, loader, desc, self.normalize, self.amp_dtype):
            positions = positions.cpu()
            ok = positions >= 0
            for failed in (-1 - positions[~ok]).tolist():
                self.unreadable.append(images.unreadable(failed))
                tqdm.write(f"[Skipped] {self.unreadable[-1]}")
            yield Embedded(positions[ok], embeddings[ok.to(embeddings.device)].cpu())
