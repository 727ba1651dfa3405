"""Access to the authors' reference vectors in tests/data/reference (see its README)."""
from functools import lru_cache
from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """The contents of ``tests/data/reference/<name>.pt``."""
    return torch.load(REFERENCE_DIR / f"{name}.pt", weights_only=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
