"""Batched, device-aware embedding extraction, shared by evaluation and the model-use commands."""
from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from dataset.transforms import DeviceNormalize
from experiment import distributed
from experiment.device import to_device
from experiment.distributed import Context


def iterate_embeddings(model: nn.Module, loader: Iterable, desc: str, normalize: DeviceNormalize | None = None,
                       amp_dtype: torch.dtype | None = None,
                       show: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(b, D) float32 embeddings and (b,) labels of each batch of a loader, on the model's device, in eval mode.

    ``normalize`` turns uint8 batches into the network's input there (as in
    train_one_epoch); ``amp_dtype`` runs the network under autocast, the
    embeddings staying float32. ``show`` draws a progress bar in images per second.
    """
    device = next(model.parameters()).device
    model.eval()
    dataset = getattr(loader, "dataset", None)
    with tqdm(total=len(dataset) if dataset is not None else None, ncols=80, desc=desc, unit="img",
              disable=not show) as progress:
        for images, labels in loader:
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                embeddings = model(to_device(images, device, normalize))
            progress.update(len(images))
            yield embeddings.float(), labels.to(device)


def extract(model: nn.Module, loader: Iterable, desc: str, ctx: Context = Context(),
            normalize: DeviceNormalize | None = None,
            amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 embeddings and (N,) labels of a loader (``iterate_embeddings``).

    Under torchrun each rank's loader holds its contiguous shard of the set;
    the shards are gathered back in dataset order on every rank.
    """
    device = next(model.parameters()).device
    embeddings, labels = [], []
    for batch, batch_labels in iterate_embeddings(model, loader, desc, normalize, amp_dtype, ctx.is_main):
        embeddings.append(batch)
        labels.append(batch_labels)
    embeddings = torch.cat(embeddings) if embeddings else torch.empty(0, model.linear.out_features, device=device)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=device)
    return distributed.gather_rows(embeddings, ctx), distributed.gather_rows(labels, ctx)
