"""Base losses from pytorch-metric-learning, the only module that imports it.

Each loss is built with the library's default hyper-parameters, overridden by
``--loss-args key=value``. Proxy and classifier losses also get the number of
training classes and the embedding size; their parameters (proxies, class
weights) are trained with the network.
"""
import ast
import inspect

from torch import nn

from errors import UserError
from optional import require

# --loss name -> (pytorch_metric_learning.losses class, needs num_classes and embedding_size)
PML_LOSSES: dict[str, tuple[str, bool]] = {
    "contrastive": ("ContrastiveLoss", False),
    "margin": ("MarginLoss", False),
    "multi-similarity": ("MultiSimilarityLoss", False),
    "circle": ("CircleLoss", False),
    "nt-xent": ("NTXentLoss", False),
    "lifted-structure": ("LiftedStructureLoss", False),
    "supcon": ("SupConLoss", False),
    "proxy-anchor": ("ProxyAnchorLoss", True),
    "proxy-nca": ("ProxyNCALoss", True),
    "arcface": ("ArcFaceLoss", True),
    "cosface": ("CosFaceLoss", True),
    "normalized-softmax": ("NormalizedSoftmaxLoss", True),
    "soft-triple": ("SoftTripleLoss", True),
}
_PLAIN = (bool, int, float, str)


def _loss_class(name: str) -> type:
    losses = require("pytorch_metric_learning.losses", "pytorch-metric-learning", f"--loss {name}")
    return getattr(losses, PML_LOSSES[name][0])


def default_hparams(cls: type) -> dict:
    """The keyword arguments of ``cls`` (and its bases) whose defaults are plain values: what --loss-args sets."""
    found: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if isinstance(param.default, _PLAIN) and param.name not in found:
                found[param.name] = param.default
    return dict(sorted(found.items()))


def parse_value(text: str):
    """A Python literal (number, bool, None, list) when ``text`` is one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _checked(name: str, key: str, value, default):
    """``value`` for ``key``: a number where the default is one, True or False where it is a bool.

    String defaults are modes (such as ``triplets_per_anchor="all"``) that may also take numbers,
    so their values pass unchecked to the library.
    """
    if isinstance(default, bool):
        wanted, fits = "True or False", isinstance(value, bool)
    elif isinstance(default, (int, float)):
        wanted, fits = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        return value
    if not fits:
        raise UserError(f"--loss-args {key}={value!r} for --loss {name}: expected {wanted}, like the default "
                        f"{key}={default!r}")
    return value


def resolve_hparams(name: str, cls: type, loss_args: list[str]) -> dict:
    """The library defaults of ``cls`` with the ``key=value`` overrides applied, checked key by key."""
    hparams = default_hparams(cls)
    for item in loss_args:
        key, _, text = item.partition("=")
        if key not in hparams:
            raise UserError(f"--loss-args {item}: --loss {name} has no option {key!r}; it takes "
                            f"{', '.join(hparams)}")
        hparams[key] = _checked(name, key, parse_value(text), hparams[key])
    return hparams


def build_pml_loss(name: str, loss_args: list[str], num_classes: int, embedding_size: int) -> tuple[nn.Module, dict]:
    """(loss module, the hyper-parameters it was built with) for ``--loss name``."""
    cls = _loss_class(name)
    hparams = resolve_hparams(name, cls, loss_args)
    sizes = {"num_classes": num_classes, "embedding_size": embedding_size} if PML_LOSSES[name][1] else {}
    return cls(**sizes, **hparams), hparams
