"""Search spaces: YAML files naming TrainConfig fields and the distributions to draw them from.

A space file has ``description``, an optional ``base`` (fixed overrides, nested like
TrainConfig) and ``params``: ``"section.field": distribution`` (or a bare value = a constant)
for the sections model, optim and augment. ``model.num_blocks`` is special: the number of conv
blocks. Fields holding one value per block (model.filters, model.convs_per_block,
model.dropout) may be ``per_block: true``: one draw per existing block, named
``model.filters.0``, ``model.filters.1``, ... in Optuna.

Everything is checked at load time (unknown keys, types by merging into a default TrainConfig,
empty ranges), so a typo fails before a cluster starts instead of being silently ignored.
Sampling is define-by-run on an Optuna trial; this package imports neither Ray nor torch.

Layout: ``_params`` holds Param and SearchSpace (sampling, overrides, contains) and
check_architecture; ``_load`` reads and validates YAML files into them (load_space,
list_spaces, space_from_dict). Import everything from ``fer_ray.space``.
"""

from fer_ray.space._load import (
    MAX_BLOCKS,
    MIN_BLOCKS,
    OPTIONAL,
    REQUIRED,
    SPACES_DIR,
    TOP_LEVEL,
    list_spaces,
    load_space,
    space_from_dict,
)
from fer_ray.space._params import (
    NUM_BLOCKS,
    PER_BLOCK_FIELDS,
    SECTIONS,
    Param,
    SearchSpace,
    check_architecture,
)

__all__ = [
    "MAX_BLOCKS",
    "MIN_BLOCKS",
    "NUM_BLOCKS",
    "OPTIONAL",
    "PER_BLOCK_FIELDS",
    "REQUIRED",
    "SECTIONS",
    "SPACES_DIR",
    "TOP_LEVEL",
    "Param",
    "SearchSpace",
    "check_architecture",
    "list_spaces",
    "load_space",
    "space_from_dict",
]
