"""Reading and writing weights: safe loading, clear mismatch errors, atomic saves."""
import os
import pickle
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import torch
from torch import nn

from errors import UserError


def umask_mode() -> int:
    """0o666 less the process umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once the ``with`` block succeeds (temporary file, fsync, rename).

    A crash or a full disk leaves the previous ``path`` intact, never a torn
    file; the temporary file is named ``.NAME.*.tmp``. The new file gets the
    umask's permissions, like every other output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: object, path: str | Path) -> None:
    """torch.save ``obj`` with its tensors on the CPU (``on_cpu``) to ``path`` atomically (see ``atomic_file``).

    A file of CUDA tensors would need a GPU, or ``map_location``, to be loaded.
    """
    with atomic_file(path) as f:
        torch.save(on_cpu(obj), f)


def on_cpu(obj: object) -> object:
    """``obj`` with every tensor in its dicts, lists and tuples moved to the CPU (CPU tensors are not copied).

    A state_dict keeps its ``_metadata`` (the module versions ``load_state_dict`` reads).
    """
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        moved = (OrderedDict if isinstance(obj, OrderedDict) else dict)((k, on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            moved._metadata = obj._metadata
        return moved
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def read_weights_file(path: str | Path) -> dict:
    """Load ``path`` with ``weights_only=True``: a file holding arbitrary pickled code is refused."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a weights file such as {path / 'best.pth'}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; check the path given (a run folder's best.pth, last.pth or "
                        "checkpoint.pth, or the authors' .pth)")
    if not is_torch_file(path):
        raise UserError(f"{path} is not a PyTorch file (neither a torch.save zip nor a pickle); pass a .pth "
                        "weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"refused to load {path}: it holds pickled objects other than tensors and plain "
                        "containers, which could run code; only weights files are accepted") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"cannot read checkpoint {path} ({exc}); the file is damaged or not a torch file") from exc


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a torch.save file: a zip archive, or a pickle of protocol 2 or later."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def model_state(checkpoint: dict) -> dict:
    """The model state_dict inside an authors' plain state_dict, a DataParallel one or a full checkpoint."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise UserError("the checkpoint holds no state_dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def mismatches(model: nn.Module, state: dict, show: int = 5) -> list[str]:
    """Human-readable differences between ``model``'s keys/shapes and ``state``'s, first ``show`` of each kind."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    out = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            out.append(f"{title} keys: {', '.join(items[:show])}{more}")
    return out


def load_model_weights(model: nn.Module, path: str | Path, checkpoint: dict | None = None) -> None:
    """Load the weights at ``path`` (or its already read ``checkpoint``) into ``model`` strictly.

    Raises listing the first mismatches when keys or shapes differ.
    """
    state = model_state(read_weights_file(path) if checkpoint is None else checkpoint)
    problems = mismatches(model, state)
    if problems:
        raise UserError(f"checkpoint {path} does not fit this model (check --backbone, --embedding-size, "
                        f"--l2norm): {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
