"""fer-ray: hyperparameter search and ensembles for facial emotion recognition on Ray Tune.

Data flows one way: data -> models -> train -> trainable -> search -> ensemble -> predict/report.
Only search, the trainable and serve (Ray Serve) import Ray.
"""

from fer_ray.errors import ConfigError, DataError, FerRayError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "FerRayError", "__version__"]
