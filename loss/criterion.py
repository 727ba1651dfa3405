"""The base loss of a run (--loss, --loss-args), its trainable parameters and their optimizer group."""
import argparse
import warnings

import torch
from torch import nn

from errors import UserError
from loss.pml import PML_LOSSES, build_pml_loss
from loss.sampler import build_sampler
from loss.triplet import TripletLoss

TRIPLET_MARGIN = 0.2
LOSS_NAMES = ("triplet",) + tuple(PML_LOSSES)


TRIAL_CLASSES, TRIAL_PER_CLASS = 4, 2  # the batch of random embeddings that check_criterion tries


def _construct(args: argparse.Namespace, num_classes: int, loss_args: list[str],
               generator: torch.Generator | None = None) -> tuple[nn.Module, dict]:
    if args.loss == "triplet":
        if loss_args:
            raise UserError(f"--loss-args {' '.join(loss_args)}: the authors' triplet loss has fixed "
                            "options (margin 0.2, negatives from --sampler); drop --loss-args or pick another --loss")
        return (TripletLoss(TRIPLET_MARGIN, build_sampler(args.sampler, generator)),
                {"margin": TRIPLET_MARGIN, "sampler": args.sampler})
    return build_pml_loss(args.loss, loss_args, num_classes, args.embedding_size)


def build_criterion(args: argparse.Namespace, num_classes: int,
                    generator: torch.Generator | None = None) -> tuple[nn.Module, dict]:
    """(loss, hyper-parameters used): the authors' triplet loss or a pytorch-metric-learning loss; prints them.

    ``num_classes`` sizes the proxies or class weights of proxy and classifier losses;
    the triplet loss's random negatives are drawn from ``generator``.
    """
    criterion, hparams = _construct(args, num_classes, args.loss_args, generator)
    print(f"Loss: {args.loss} " + " ".join(f"{k}={v!r}" for k, v in hparams.items()))
    return criterion, hparams


def _trial(args: argparse.Namespace, loss_args: list[str]) -> str | None:
    """What goes wrong when --loss with ``loss_args`` is built and run on a batch of random embeddings; None
    when its value is finite. A UserError about the flags themselves (unknown key, wrong type) is raised."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(TRIAL_CLASSES * TRIAL_PER_CLASS, args.embedding_size, generator=generator)
    labels = torch.arange(TRIAL_CLASSES).repeat_interleave(TRIAL_PER_CLASS)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        criterion, _ = _construct(args, TRIAL_CLASSES, loss_args)
        try:
            value = criterion(embeddings, labels)
        except Exception as exc:  # whatever the library raises on values it cannot use
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            return f"fails on a batch of random embeddings ({type(exc).__name__}: {reason})"
    if not torch.isfinite(value).all():
        return (f"gives {value.item()} on a batch of random embeddings (a value that divides by zero or "
                "overflows)")
    return None


def check_criterion(args: argparse.Namespace) -> None:
    """Refuse --loss-args the loss cannot use, in one line naming them, before a run starts.

    The loss is built with them and run once on a batch of random embeddings
    (generated apart; the global random state is left as it was); the values
    that fail on their own are named, or all of them when only together.
    """
    if not args.loss_args:
        return
    problem = _trial(args, args.loss_args)
    if problem is None:
        return
    named = [item for item in args.loss_args if _trial(args, [item]) is not None] or args.loss_args
    raise UserError(f"--loss-args {' '.join(named)}: --loss {args.loss} {problem}; change "
                    f"{'it' if len(named) == 1 else 'them'}, or drop --loss-args for the library's defaults")


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
