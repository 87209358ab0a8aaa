import sys

from fer_ray.serve.cli import main

sys.exit(main())
