"""timm models as trunks (--backbone timm:NAME); the only module that imports timm, and only when asked."""
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from errors import UserError
from experiment.optional import require

PREFIX = "timm:"


def is_timm(backbone: str) -> bool:
    """Whether ``backbone`` names a timm model: ``timm:`` followed by a model name."""
    return isinstance(backbone, str) and backbone.startswith(PREFIX) and len(backbone) > len(PREFIX)


def _timm(backbone: str) -> tuple[ModuleType, str]:
    """(the timm module, the model name of ``backbone``), the name checked against timm's registry."""
    timm = require("timm", "timm", f"--backbone {backbone}")
    name = backbone[len(PREFIX):]
    if not timm.is_model(name):
        raise UserError(f"--backbone {backbone}: timm {timm.__version__} has no model {name!r}; list the names "
                        f"with: python -c \"import timm; print(timm.list_models('*{name.split('.')[0][:6]}*'))\"")
    return timm, name


def timm_input(backbone: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input side, RGB mean, RGB std) that timm's pretrained configuration gives the model."""
    timm, name = _timm(backbone)
    cfg = timm.models.get_pretrained_cfg(name)
    data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    return data["input_size"][-1], tuple(data["mean"]), tuple(data["std"])


def _create(timm: ModuleType, backbone: str, name: str, pretrained: bool | str | Path) -> nn.Module:
    """timm.create_model without classifier; a weights file goes through timm's own loading."""
    if isinstance(pretrained, (str, Path)):
        path = Path(pretrained)
        if not path.is_file():
            raise UserError(f"pretrained weights {path} not found; pass an existing file to --pretrained "
                            "or train from scratch with --no-pretrained")
        try:
            return timm.create_model(name, pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay={"file": str(path)})
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"pretrained weights {path} do not fit --backbone {backbone}: "
                            f"{str(exc).splitlines()[0]}; pass the weights of {name}") from None
    try:
        return timm.create_model(name, pretrained=bool(pretrained), num_classes=0)
    except Exception as exc:
        raise UserError(f"cannot load timm's pretrained weights of {name} ({str(exc).splitlines()[0]}); download "
                        "them elsewhere and pass the file with --pretrained PATH, or use --no-pretrained") from None


class TimmTrunk(nn.Module):
    """A timm model without classifier: (N, 3, H, W) images -> (N, output_size) globally pooled features.

    The pooling is the model's own (average pooling for CNNs, the class token
    for most vision transformers).
    """

    def __init__(self, backbone: str, pretrained: bool | str | Path = True):
        super().__init__()
        timm, name = _timm(backbone)
        self.model = _create(timm, backbone, name, pretrained)
        self.output_size = self.model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
