"""Embedding models: backbones, heads and their construction."""
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from errors import UserError
from experiment.guards import check_name_hash
from model.bninception import BNInceptionTrunk
from model.checkpoint import mismatches, read_weights_file
from model.embedding import Embedding, L2NormEmbedding
from model.resnet import ResNetTrunk
from model.timm_backbone import TimmTrunk, is_timm


class BackboneNames(tuple):
    """The built-in backbones; ``in`` also accepts any ``timm:NAME`` (so argparse's choices take it)."""

    def __contains__(self, name: object) -> bool:
        return tuple.__contains__(self, name) or is_timm(name)


BUILTIN_BACKBONES = ("bninception", "resnet18", "resnet50")
BACKBONES = BackboneNames(BUILTIN_BACKBONES + ("timm:NAME",))
BNINCEPTION_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
_TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V1"}


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"pretrained weights {path} not found; pass an existing file to --pretrained "
                        "or train from scratch with --no-pretrained")
    state = read_weights_file(path)
    if not isinstance(state, dict):
        raise UserError(f"pretrained weights {path} hold no state_dict; pass the ImageNet weights file itself")
    return state


def _bninception_imagenet(path: Path | None) -> dict:
    """ImageNet weights of BN-Inception with Cadene's 1xN tensors squeezed to N."""
    if path is None:
        try:
            state = torch.hub.load_state_dict_from_url(BNINCEPTION_URL, map_location="cpu",
                                                       check_hash=True, weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot download BN-Inception ImageNet weights from {BNINCEPTION_URL} ({exc}); "
                            "download bn_inception-52deb4733.pth elsewhere and pass it with --pretrained PATH, "
                            "or use --no-pretrained") from exc
    else:
        state = _read_state_dict(path)
    return {k: v.squeeze(0) if v.dim() == 2 and v.shape[0] == 1 else v for k, v in state.items()}


def _load_pretrained(module: nn.Module, state: dict, path: Path | None, backbone: str) -> None:
    """Load ImageNet weights strictly; a file of another architecture is one clear error.

    Prints how many backbone tensors the file filled, so a half-loaded backbone cannot pass unnoticed.
    """
    problems = mismatches(module, state)
    if problems:
        raise UserError(f"pretrained weights {path or 'downloaded file'} do not fit --backbone {backbone}: "
                        f"{'; '.join(problems)}; pass the ImageNet weights of {backbone}")
    module.load_state_dict(state)
    total = len(module.state_dict())
    print(f"[Weights] {path or 'downloaded file'} filled {sum(k in state for k in module.state_dict())} of "
          f"{total} backbone tensors")


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


def _download_resnet(name: str) -> Path:
    """torchvision's ImageNet weights file of ``name``, downloaded into torch.hub's cache when missing."""
    try:
        torch.hub.load_state_dict_from_url(imagenet_weights_url(name), map_location="cpu", check_hash=True,
                                           weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot download the torchvision ImageNet weights of {name} ({exc}); "
                        "pass a local file with --pretrained PATH, or use --no-pretrained") from exc
    return imagenet_weights_file(name, True)


def build_backbone(name: str, pretrained: bool | str | Path = True) -> nn.Module:
    """A backbone with an ``output_size`` attribute; ``pretrained`` is True, False or a weights file."""
    if is_timm(name):
        return TimmTrunk(name, pretrained)
    if name not in BUILTIN_BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    path = Path(pretrained) if isinstance(pretrained, (str, Path)) else None
    if name == "bninception":
        trunk = BNInceptionTrunk()
        if pretrained:
            _load_pretrained(trunk.model, _bninception_imagenet(path), path, name)
        return trunk
    trunk = ResNetTrunk(name)
    if pretrained:
        path = path or _download_resnet(name)
        state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("fc.")}
        check_name_hash(path)
        _load_pretrained(trunk, state, path, name)
    return trunk


def build_model(backbone: str = "bninception", embedding_size: int = 512, l2norm: bool = False,
                pretrained: bool | str | Path = True) -> Embedding:
    """The authors' embedding model: ``base`` (the backbone) and ``linear`` (the head)."""
    base = build_backbone(backbone, pretrained)
    head = L2NormEmbedding if l2norm else Embedding
    return head(base, feature_size=base.output_size, embedding_size=embedding_size)
