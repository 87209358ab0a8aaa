"""What every fer-ray CLI shares: known errors become one line on stderr and exit code 2."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from importlib import metadata

from fer_ray.errors import FerRayError


def run_main(body: Callable[[], int]) -> int:
    """Run a CLI body; FerRayError -> 'error: <message>' on stderr and exit 2, no traceback."""
    try:
        return body()
    except FerRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on, for run records."""
    out = {"python": platform.python_version()}
    for pkg in ("fer-ray", "torch", "numpy", "ray", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out
