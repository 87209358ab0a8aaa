"""Serving an ensemble over HTTP with Ray Serve: ``python -m fer_ray.serve --ensemble DIR``.

``cli`` (flags, start, stop), ``settings`` (their checks, no Ray), ``uploads`` (requests to
photos, refusals to 4xx) and ``app`` (the deployment). Importing this package loads nothing
heavy; only ``app`` imports Ray.
"""
