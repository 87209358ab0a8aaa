import sys

from fer_ray.search.cli import main

sys.exit(main())
