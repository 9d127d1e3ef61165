"""Where mixlab's internals live, checked before anything imports them.

The code behind this package is still in the top-level packages ``app`` (and
``worker``), generic names a user's own project may also have. A folder named
``app`` in the working directory of a notebook comes first on ``sys.path`` and
would be imported in place of ours, failing later with a puzzling error; this
turns that into one clear ``ImportError`` without importing the user's package.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "app"
# installed (or checked out) side by side: <root>/mixlab and <root>/app
EXPECTED = Path(__file__).resolve().parent.parent / PACKAGE


def _origin() -> Path | None:
    """Directory of the package that ``import app`` gives (or gave), found
    without importing it; a module ``app.py`` gives its folder."""
    module = sys.modules.get(PACKAGE)
    spec = (getattr(module, "__spec__", None) if module is not None
            else importlib.util.find_spec(PACKAGE))
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0]).resolve()
    return Path(spec.origin).resolve().parent if spec.origin else None


def check() -> None:
    """Raise ImportError when ``app`` is not mixlab's own package."""
    found = _origin()
    if found != EXPECTED:
        raise ImportError(
            f"mixlab's internals are the package {PACKAGE!r} at {EXPECTED}, but "
            f"{PACKAGE!r} resolves to {found or 'nothing'} (a folder or module of your own "
            f"named {PACKAGE!r}, earlier on sys.path?). Rename it, or import mixlab from "
            "another working directory.")
