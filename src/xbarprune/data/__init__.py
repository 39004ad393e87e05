"""Data sets (DESIGN.md `data/`): an embedded MNIST subset that works offline, readers for
MNIST / Fashion-MNIST IDX files, CIFAR-10/100 python pickles and image folders, and optional
torchvision download. See :mod:`xbarprune.data.datasets` for the normalisation constants and
the provenance and licence of the embedded set (MNIST: Y. LeCun, C. Cortes, C. J. C. Burges;
CC BY-SA 3.0).

>>> from xbarprune.data import load_splits, make_loader
>>> splits = load_splits("mnist-embedded", val_size=0.1, seed=0)
>>> loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0)
"""

from xbarprune.data.cifar import SafeUnpickler, read_cifar_file, safe_pickle_load
from xbarprune.data.datasets import (
    DATASETS,
    DatasetInfo,
    DataSplits,
    balanced_subset,
    default_data_roots,
    list_datasets,
    load_splits,
    make_loader,
    stratified_split,
)
from xbarprune.data.heldout import (
    DEFAULT_VAL_FRACTION,
    heldout_val_size,
    mark_split,
    selection_data,
    split_role,
)
from xbarprune.data.idx import read_idx, write_idx

__all__ = [
    "DATASETS",
    "DEFAULT_VAL_FRACTION",
    "DataSplits",
    "DatasetInfo",
    "SafeUnpickler",
    "balanced_subset",
    "default_data_roots",
    "heldout_val_size",
    "list_datasets",
    "load_splits",
    "make_loader",
    "mark_split",
    "read_cifar_file",
    "read_idx",
    "safe_pickle_load",
    "selection_data",
    "split_role",
    "stratified_split",
    "write_idx",
]
