"""timm models as trunks (--backbone timm:NAME); the only module that imports timm, and only when asked."""
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from errors import UserError
from optional import require
from model.checkpoint import read_weights_file
from model.pretrained import load_pretrained

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


# The state_dict inside a checkpoint, in the order timm's own loading picks it (its EMA weights first).
CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def _file_state(timm: ModuleType, path: Path) -> dict:
    """The state_dict in a weights file: a torch file (also a checkpoint holding it) or a .safetensors file."""
    if not path.is_file():
        raise UserError(f"pretrained weights {path} not found; pass an existing file to --pretrained "
                        "or train from scratch with --no-pretrained")
    if path.suffix == ".safetensors":
        try:
            return timm.models.load_state_dict(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"cannot read pretrained weights {path} ({str(exc).splitlines()[0]}); the file is "
                            "damaged or not a safetensors file") from None
    state = read_weights_file(path)
    if isinstance(state, dict):
        state = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict):
        raise UserError(f"pretrained weights {path} hold no state_dict; pass the weights file of the timm model")
    return timm.models.clean_state_dict(state)


def _create(timm: ModuleType, backbone: str, name: str, pretrained: bool | str | Path) -> nn.Module:
    """timm.create_model without classifier; a weights file loads as strictly as the authors' backbones.

    The file must hold the model's own keys (timm's published files and
    ``model.state_dict()`` do); its classifier is dropped, every other tensor
    must fit, and the "[Weights] FILE filled N of M backbone tensors" line is printed.
    """
    if isinstance(pretrained, (str, Path)):
        path = Path(pretrained)
        state = _file_state(timm, path)
        model = timm.create_model(name, pretrained=False, num_classes=0)
        classifiers = model.pretrained_cfg.get("classifier") or ()
        classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
        state = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in classifiers}
        load_pretrained(model, state, path, backbone)
        return model
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
