"""The base loss of a run (--loss, --loss-args), its trainable parameters and their optimizer group."""
import argparse

import torch
from torch import nn

from errors import UserError
from loss.pml import PML_LOSSES, build_pml_loss
from loss.sampler import build_sampler
from loss.triplet import TripletLoss

TRIPLET_MARGIN = 0.2
LOSS_NAMES = ("triplet",) + tuple(PML_LOSSES)


def build_criterion(args: argparse.Namespace, num_classes: int,
                    generator: torch.Generator | None = None) -> tuple[nn.Module, dict]:
    """(loss, hyper-parameters used): the authors' triplet loss or a pytorch-metric-learning loss; prints them.

    ``num_classes`` sizes the proxies or class weights of proxy and classifier losses;
    the triplet loss's random negatives are drawn from ``generator``.
    """
    if args.loss == "triplet":
        if args.loss_args:
            raise UserError(f"--loss-args {' '.join(args.loss_args)}: the authors' triplet loss has fixed "
                            "options (margin 0.2, negatives from --sampler); drop --loss-args or pick another --loss")
        criterion = TripletLoss(TRIPLET_MARGIN, build_sampler(args.sampler, generator))
        hparams = {"margin": TRIPLET_MARGIN, "sampler": args.sampler}
    else:
        criterion, hparams = build_pml_loss(args.loss, args.loss_args, num_classes, args.embedding_size)
    print(f"Loss: {args.loss} " + " ".join(f"{k}={v!r}" for k, v in hparams.items()))
    return criterion, hparams


def loss_param_groups(criterion: nn.Module, lr: float, lr_mult: float) -> list[dict]:
    """The optimizer group of the loss's own parameters (proxies, class weights) at ``lr * lr_mult``, if any."""
    params = list(criterion.parameters())
    return [{"params": params, "lr": lr * lr_mult}] if params else []


def loss_arg(text: str) -> str:
    """An argparse type: one ``key=value`` of --loss-args."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier() or not value:
        raise argparse.ArgumentTypeError(f"expected key=value, e.g. margin=0.1, got {text!r}")
    return text
