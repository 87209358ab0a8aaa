"""``python -m fer_ray.report``."""

import sys

from fer_ray.report.cli import main

sys.exit(main())
