"""Embedding models: backbones, heads and their construction."""
from pathlib import Path

from torch import nn

from errors import UserError
from model.bninception import BNInceptionTrunk
from model.embedding import Embedding, L2NormEmbedding
from model.pretrained import (bninception_state, check_name_hash, download, imagenet_weights_file, load_pretrained,
                              read_state_dict)
from model.resnet import ResNetTrunk
from model.timm_backbone import TimmTrunk, is_timm


class BackboneNames(tuple):
    """The built-in backbones; ``in`` also accepts any ``timm:NAME`` (so argparse's choices take it)."""

    def __contains__(self, name: object) -> bool:
        return tuple.__contains__(self, name) or is_timm(name)


__all__ = ["BACKBONES", "BUILTIN_BACKBONES", "build_backbone", "build_model", "imagenet_weights_file"]

BUILTIN_BACKBONES = ("bninception", "resnet18", "resnet50")
BACKBONES = BackboneNames(BUILTIN_BACKBONES + ("timm:NAME",))


def build_backbone(name: str, pretrained: bool | str | Path = True) -> nn.Module:
    """A backbone with an ``output_size`` attribute; ``pretrained`` is True, False or a weights file."""
    if is_timm(name):
        return TimmTrunk(name, pretrained)
    if name not in BUILTIN_BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    trunk = BNInceptionTrunk() if name == "bninception" else ResNetTrunk(name)
    if not pretrained:
        return trunk
    path = Path(pretrained) if isinstance(pretrained, (str, Path)) else download(name)
    if name == "bninception":
        load_pretrained(trunk.model, bninception_state(path), path, name)
    else:
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
        check_name_hash(path)
        load_pretrained(trunk, state, path, name)
    return trunk


def build_model(backbone: str = "bninception", embedding_size: int = 512, l2norm: bool = False,
                pretrained: bool | str | Path = True) -> Embedding:
    """The authors' embedding model: ``base`` (the backbone) and ``linear`` (the head)."""
    base = build_backbone(backbone, pretrained)
    head = L2NormEmbedding if l2norm else Embedding
    return head(base, feature_size=base.output_size, embedding_size=embedding_size)
