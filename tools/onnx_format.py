"""ONNX for tools.export: the only module that imports onnx, onnxscript and onnxruntime, and only when asked."""
import inspect
from typing import Callable

import numpy as np
import torch
from torch import nn

from errors import UserError
from optional import require

PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx.export needs the first two, the self-check the third


def require_onnx() -> None:
    """A one-line UserError with the install hint unless every package ``--format onnx`` needs imports."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise UserError(f"--format onnx needs torch 2.5 or newer (this is {torch.__version__}); upgrade torch, or "
                        "use --format torchscript")
    for package in PACKAGES:
        require(package, package, "--format onnx")


def to_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX file of ``module`` (input "images", output "embeddings", any batch size), from torch's exporter."""
    require_onnx()
    program = torch.onnx.export(module, (example,), None, input_names=["images"], output_names=["embeddings"],
                                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, dynamo=True)
    return program.model_proto.SerializeToString()


def onnx_runner(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the ONNX ``model`` in onnxruntime on the CPU: (N, 3, S, S) uint8 -> (N, D) float32."""
    ort = require("onnxruntime", "onnxruntime", "--format onnx")
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})[0]
