import sys

from fer_ray.train.cli import main

sys.exit(main())
