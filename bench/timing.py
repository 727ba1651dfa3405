"""Timing shared by the benches: the embedding rate of the extraction that evaluation runs."""
import time

import torch
from torch import nn

from dataset.transforms import device_normalization
from experiment.device import synchronize
from experiment.extraction import extract


def extraction_rate(model: nn.Module, batches: list, device: torch.device, backbone: str = "bninception") -> float:
    """Embeddings/s of ``experiment.extraction.extract`` over ``batches`` of (uint8 (B, 3, H, W), (B,) labels),
    after one warm-up batch, with ``backbone``'s normalisation on ``device``."""
    normalize = device_normalization(backbone)
    extract(model, batches[:1], "warm-up", normalize=normalize)
    synchronize(device)
    start = time.perf_counter()
    extract(model, batches, "eval", normalize=normalize)
    synchronize(device)
    return sum(len(labels) for _, labels in batches) / (time.perf_counter() - start)
