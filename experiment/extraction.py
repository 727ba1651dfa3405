"""Batched, device-aware embedding extraction, shared by evaluation and the model-use commands."""
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.transforms import DeviceNormalize
from experiment import distributed
from experiment.device import to_device
from experiment.distributed import Context


@torch.inference_mode()
def extract(model: nn.Module, loader: DataLoader, desc: str,
            ctx: Context = Context(), normalize: DeviceNormalize | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 embeddings and (N,) labels of a loader, in eval mode; ``normalize`` as in train_one_epoch.

    Under torchrun each rank's loader holds its contiguous shard of the set;
    the shards are gathered back in dataset order on every rank.
    """
    device = next(model.parameters()).device
    model.eval()
    embeddings, labels = [], []
    for images, batch_labels in tqdm(loader, ncols=80, desc=desc, disable=not ctx.is_main):
        embeddings.append(model(to_device(images, device, normalize)).float())
        labels.append(batch_labels.to(device))
    embeddings = torch.cat(embeddings) if embeddings else torch.empty(0, model.linear.out_features, device=device)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=device)
    return distributed.gather_rows(embeddings, ctx), distributed.gather_rows(labels, ctx)
