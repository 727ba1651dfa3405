"""Optional dependencies (requirements-extra.txt): imported on first use, a one-line install hint when missing."""
import importlib
from types import ModuleType

from errors import UserError

EXTRAS_FILE = "requirements-extra.txt"


def require(module: str, package: str, needed_for: str) -> ModuleType:
    """Import ``module`` (its top-level package first, so a blocked package is noticed even when a
    submodule was imported before); when missing, a UserError names the pip package to install."""
    try:
        importlib.import_module(module.split(".")[0])
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{needed_for} needs the optional package {package}, which cannot be imported ({exc}); "
                        f"install it with: pip install {package} (or pip install -r {EXTRAS_FILE})") from None
