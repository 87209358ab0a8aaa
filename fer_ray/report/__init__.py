"""Reports: figures, ``report.md`` and a self-contained ``report.html`` for one experiment.

``python -m fer_ray.report --experiment DIR``. Reads the experiment folder only (no Ray).
"""

from fer_ray.report.cli import build_report

__all__ = ["build_report"]
