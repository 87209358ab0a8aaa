"""Data: loaders for FER2013 CSV / image folders / npz, the built-in synthetic faces, splits."""

from fer_ray.data._types import (
    CLASS_NAMES,
    FERPLUS_CLASS_NAMES,
    LABEL_SETS,
    NUM_CLASSES,
    RawDataset,
    Split,
    class_names,
)
from fer_ray.data.splits import (
    FerData,
    add_test_split,
    class_distribution,
    fingerprint,
    format_class_table,
    load_data,
    prepare,
    stratified_split,
)

__all__ = [
    "CLASS_NAMES",
    "FERPLUS_CLASS_NAMES",
    "LABEL_SETS",
    "NUM_CLASSES",
    "FerData",
    "RawDataset",
    "Split",
    "add_test_split",
    "class_distribution",
    "class_names",
    "fingerprint",
    "format_class_table",
    "load_data",
    "prepare",
    "stratified_split",
]
