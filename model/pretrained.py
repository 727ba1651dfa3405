"""ImageNet weights of the backbones: where they come from, whether a file is the published one, strict loading."""
import hashlib
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from errors import UserError
from model.checkpoint import mismatches, read_weights_file

BNINCEPTION_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
_TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V1"}
# torch.hub's rule: the hex digits after the '-' of a weights file's name start its sha256.
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
BNINCEPTION_SHA256 = "52deb473314542a5c2f87e9e6f26f4ca42fe863d15f986414dbae8c2dfdd2353"
# The whole sha256 of published files whose name carries only its start.
PUBLISHED_SHA256 = {"52deb4733": BNINCEPTION_SHA256}
# What a strict load of a state without version metadata fills in itself: BatchNorm's batch counters, which
# files saved before PyTorch 0.4 (Cadene's BN-Inception of 2017) lack. Nothing reads them (momentum is set).
BATCH_COUNTER = "num_batches_tracked"


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 of ``path``, computed once per file version."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def check_name_hash(path: Path) -> str:
    """Refuse ``path`` when its sha256 is not what its name promises; returns the sha256.

    A name carrying a hash (``resnet18-f37072fd.pth``) promises a sha256 that
    starts with it, as torch.hub checks downloads; for a published file of
    ``PUBLISHED_SHA256`` (``bn_inception-52deb4733.pth``) the whole sha256 is
    known and must be it. A name without a hash (a user's own file) is not checked.
    """
    digest = sha256_file(path)
    match = HASH_IN_NAME.search(path.name)
    if not match or not match.group(1):
        return digest
    prefix = match.group(1)
    published = PUBLISHED_SHA256.get(prefix)
    if digest == published or (published is None and digest.startswith(prefix)):
        return digest
    promise = (f"the published {path.name} has sha256 {published}" if published
               else f"the name says it starts with {prefix}")
    raise UserError(f"pretrained weights {path} have sha256 {digest}, but {promise}; the file is damaged or not "
                    "the published one: delete it and download it again, or pass the right file to --pretrained")


def read_state_dict(path: Path) -> dict:
    """The state_dict in the weights file ``path``; a missing file or one holding something else is a UserError."""
    if not path.is_file():
        raise UserError(f"pretrained weights {path} not found; pass an existing file to --pretrained "
                        "or train from scratch with --no-pretrained")
    state = read_weights_file(path)
    if not isinstance(state, dict):
        raise UserError(f"pretrained weights {path} hold no state_dict; pass the ImageNet weights file itself")
    return state


def imagenet_weights_url(name: str) -> str:
    """Where the ImageNet weights of backbone ``name`` are downloaded from."""
    if name == "bninception":
        return BNINCEPTION_URL
    return torchvision.models.get_weight(_TORCHVISION_WEIGHTS[name]).url


def imagenet_weights_file(name: str, pretrained: bool | str | Path) -> Path | None:
    """The ImageNet weights file backbone ``name`` loads: the --pretrained PATH, or torch.hub's cached download.

    None with --no-pretrained.
    """
    if not pretrained:
        return None
    if isinstance(pretrained, (str, Path)):
        return Path(pretrained)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(imagenet_weights_url(name)).path).name


def download(name: str) -> Path:
    """The published ImageNet weights file of backbone ``name``, downloaded into torch.hub's cache when missing.

    torch.hub checks the start of the sha256 that the name carries when it
    downloads; ``check_name_hash`` checks the file, cached or new, again.
    """
    url = imagenet_weights_url(name)
    try:
        torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except Exception as exc:
        hint = ("download bn_inception-52deb4733.pth elsewhere and pass it with --pretrained PATH" if name == "bninception"
                else "pass a local file with --pretrained PATH")
        raise UserError(f"cannot download the ImageNet weights of {name} from {url} ({exc}); {hint}, "
                        "or use --no-pretrained") from exc
    path = imagenet_weights_file(name, True)
    check_name_hash(path)
    return path


def bninception_state(path: Path) -> dict:
    """BN-Inception's ImageNet state from ``path``, its 1xN tensors squeezed to N as the authors' code does.

    A file that is not the published one (a user's own weights under another
    name) loads with a warning that the paper's numbers come from the published one.
    """
    state = read_state_dict(path)
    digest = check_name_hash(path)
    if digest != BNINCEPTION_SHA256:
        print(f"[Warning] {path} is not the published BN-Inception ImageNet file (its sha256 is {digest}, that of "
              f"bn_inception-52deb4733.pth is {BNINCEPTION_SHA256}); the paper's numbers come from the published file")
    return {k: v.squeeze(0) if v.dim() == 2 and v.shape[0] == 1 else v for k, v in state.items()}


def absent_batch_counters(module: nn.Module, state: dict) -> list[str]:
    """The ``num_batches_tracked`` keys of ``module``'s BatchNorm layers that ``state`` lacks."""
    keys = [f"{name}.{BATCH_COUNTER}" if name else BATCH_COUNTER for name, layer in module.named_modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats]
    return [key for key in keys if key not in state]


def load_pretrained(module: nn.Module, state: dict, source: Path | str, backbone: str) -> None:
    """Load ImageNet weights strictly into ``module``; a file of another architecture is one clear error.

    The one thing accepted beyond an exact match is what the authors' strict
    load of their rebuilt dict accepts: BatchNorm batch counters missing from
    the file, which start at 0. Prints how many backbone tensors the file
    filled, so a half-loaded backbone cannot pass unnoticed.
    """
    counters = absent_batch_counters(module, state)
    full = {**state, **{key: module.state_dict()[key] for key in counters}}
    problems = mismatches(module, full)
    if problems:
        raise UserError(f"pretrained weights {source} do not fit --backbone {backbone}: {'; '.join(problems)}; "
                        f"pass the ImageNet weights of {backbone}")
    module.load_state_dict(full)
    total = len(module.state_dict())
    note = (f" (the file predates BatchNorm's {BATCH_COUNTER}: its {len(counters)} counters start at 0, and "
            "nothing reads them)" if counters else "")
    print(f"[Weights] {source} filled {total - len(counters)} of {total} backbone tensors{note}")
