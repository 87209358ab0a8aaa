"""Test-time augmentation (TTA) modes: their names, views, and how a stored value is read.

Torch-free (numpy-free too), so ``ensemble.json``'s schema and the onnxruntime engine read a
mode without importing torch; the views themselves are computed by
``fer_ray.models.inference.tta_logits``.

A mode's views, in order (each mode's views begin with the cheaper mode's, so one pass over
the most expensive mode's views gives every cheaper mode too):

- ``none``: the image;
- ``flip``: the image and its mirror image;
- ``flip_shift``: those two, then each of them shifted by ``SHIFT_PX`` pixels right, left,
  down and up with the edge pixels repeated (10 views).

A prediction is the mean of the views' logits.
"""

from __future__ import annotations

from typing import Any, Literal

from fer_ray.errors import ConfigError

TtaMode = Literal["none", "flip", "flip_shift"]
TTA_MODES: tuple[TtaMode, ...] = ("none", "flip", "flip_shift")  # cheapest first
TTA_VIEWS: dict[str, int] = {"none": 1, "flip": 2, "flip_shift": 10}
SHIFT_PX = 2
# (dx, dy) of the shifted views: content moves dx pixels right and dy pixels down.
SHIFTS: tuple[tuple[int, int], ...] = ((SHIFT_PX, 0), (-SHIFT_PX, 0), (0, SHIFT_PX),
                                       (0, -SHIFT_PX))


def tta_mode(value: Any, key: str = "tta") -> TtaMode:
    """A TTA mode from a stored or given value; ConfigError naming ``key`` when unknown.

    Booleans are the format before modes existed (flip TTA on or off): true -> "flip",
    false -> "none".
    """
    if isinstance(value, bool):
        return "flip" if value else "none"
    for mode in TTA_MODES:
        if value == mode:
            return mode
    raise ConfigError(f"{key}: {value!r:.40} is not a TTA mode (one of "
                      f"{', '.join(TTA_MODES)}, or true/false for flip/none)")
