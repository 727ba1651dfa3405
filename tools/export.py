"""Export a trained model for use outside this repository: TorchScript or ONNX, normalisation inside.

    python -m tools.export --load RUN/best.pth --format torchscript --out model.pt [model flags]
    python -m tools.export --load RUN/best.pth --format onnx --out model.onnx

The exported model takes a (N, 3, S, S) uint8 RGB batch of images already
resized to S*256/224 square (LANCZOS) and centre-cropped to S, the authors'
test transform, and returns (N, D) float32 embeddings: the backbone's
normalisation (BN-Inception's BGR x 255 minus its mean, or the ImageNet or
timm mean and std) is inside, so it cannot be got wrong. The model flags are
read from the run of WEIGHTS when it is one of ours, as tools.index reads
them. After writing, the export checks itself: the file's embeddings of a few
random batches must equal the PyTorch model's within 1e-4 of their norm, and
the result is printed; a file that fails is not written. ONNX needs the
optional onnx, onnxscript and onnxruntime packages (requirements-extra.txt).
"""
import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from dataset.transforms import ToNormalizedTensor, model_input, resize_size
from errors import UserError
from experiment.cli import ArgumentParser, exit_status, parse_noting_given
from experiment.trained_model import (
    ModelSpec,
    add_model_flags,
    load_model,
    spec_from_args,
)
from model.checkpoint import atomic_file
from tools.onnx_format import onnx_runner, require_onnx, to_onnx

TOLERANCE = 1e-4  # of the embeddings' norm
CHECK_BATCHES = (1, 3, 5)  # sizes of the random batches of the self-check (the export traced 2)


class Uint8Model(nn.Module):
    """(N, 3, S, S) uint8 RGB images -> (N, D) float32 embeddings: the backbone's normalisation, then the model.

    The normalisation is ``ToNormalizedTensor.finish``'s float operations in
    its order, with the constants as buffers so that they move with the module.
    """

    def __init__(self, model: nn.Module, norm: ToNormalizedTensor):
        super().__init__()
        self.model = model.eval()
        self.bgr255 = norm.bgr255
        self.register_buffer("byte_max", norm.byte_max.clone())
        self.register_buffer("mean", norm.mean.view(1, 3, 1, 1).clone())
        self.register_buffer("std", None if norm.std is None else norm.std.view(1, 3, 1, 1).clone())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if self.bgr255:
            images = images.flip(1)
        x = images.float() / self.byte_max
        if self.bgr255:
            x = x * self.byte_max
        x = x - self.mean
        return x / self.std if self.std is not None else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images)).float()


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("tools.export", __doc__)
    add_model_flags(p)
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True,
                   help="torchscript (torch.jit), or onnx (pip install onnx onnxscript onnxruntime)")
    p.add_argument("--out", required=True, metavar="FILE", help="the exported file (written only if it checks out)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (``sys.argv[1:]`` when None), with ``_given``: those typed, which the run's own do not override."""
    return parse_noting_given(get_args_parser(), argv)


def to_torchscript(module: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def torchscript_runner(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(images)).numpy()
    return run


def self_check(run: Callable[[np.ndarray], np.ndarray], model: nn.Module, norm: ToNormalizedTensor, side: int,
               seed: int = 0) -> float:
    """The largest difference between the exported and the PyTorch model's embeddings of random uint8 batches,
    relative to each embedding's norm; the PyTorch side is evaluation's normalisation and model."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in CHECK_BATCHES:
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            expected = model(norm.finish(images)).float()
        got = torch.from_numpy(np.asarray(run(images.numpy()), dtype=np.float32))
        if got.shape != expected.shape:
            return float("inf")
        error = (got - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-12)
        worst = max(worst, float(error.max()))
    return worst


def export(spec: ModelSpec, fmt: str, out: Path, checkpoint: object = None) -> float:
    """Write ``out`` (after its self-check passes); returns the check's largest relative difference."""
    if fmt == "onnx":
        require_onnx()
    model = load_model(spec, torch.device("cpu"), checkpoint)
    norm = model_input(spec.backbone, spec.image_size)[1]
    wrapped = Uint8Model(model, norm).eval()
    example = torch.randint(0, 256, (2, 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    data = to_onnx(wrapped, example) if fmt == "onnx" else to_torchscript(wrapped, example)
    runner = onnx_runner(data) if fmt == "onnx" else torchscript_runner(data)
    worst = self_check(runner, model, norm, spec.image_size)
    verdict = "passed" if worst <= TOLERANCE else "FAILED"
    print(f"Self-check: {len(CHECK_BATCHES)} random batches ({', '.join(map(str, CHECK_BATCHES))} images), largest "
          f"difference {worst:.2g} of the embedding norm (limit {TOLERANCE:g}): {verdict}")
    if worst > TOLERANCE:
        raise UserError(f"the {fmt} export of {spec.weights} does not reproduce the model's embeddings (difference "
                        f"{worst:.2g} of their norm); {out} was not written")
    with atomic_file(out) as f:
        f.write(data)
    return worst


def main(args: argparse.Namespace) -> float:
    spec, checkpoint = spec_from_args(args, "exporting")
    worst = export(spec, args.format, Path(args.out), checkpoint)
    side = spec.image_size
    print(f"Exported {spec.backbone} ({spec.embedding_size}-d) to {args.out}: input (N, 3, {side}, {side}) uint8 RGB, "
          f"resized to {resize_size(side)} square (LANCZOS) and centre-cropped to {side}; output (N, "
          f"{spec.embedding_size}) float32")
    return worst


def cli(argv: list[str] | None = None) -> int:
    return exit_status(lambda: main(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())
