import sys

from fer_ray.ensemble.cli import main

sys.exit(main())
