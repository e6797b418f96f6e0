"""Where training data comes from, and which device it trains on.

``fit``, ``evaluate`` and ``train_population`` take data as PyTorch users hold it:

- ``(X, y)`` arrays or tensors: moved to the device once; batches are index gathers.
- a map-style ``torch.utils.data.Dataset`` returning ``(x, y)`` pairs: batches are drawn as index
  batches from each run's own shuffle order (each member of a population its own), fetched with
  the dataset's ``__getitems__`` when it has one (else item by item) and collated with
  ``default_collate`` — no copy of the whole dataset is made, so a dataset that reads rows from
  disk (e.g. :class:`NpyRows`) streams. A ``TensorDataset`` is read as its tensors.
- a ``torch.utils.data.DataLoader``: its batches in its own order, shared by every member of a
  population (its sampler decides the order, not reglab's seed); its workers and ``pin_memory``
  work as usual.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate


def resolve_device(device, fallback: torch.device | None = None, owner: str = "fit") -> torch.device:
    """``None`` → ``fallback`` (e.g. where the model's weights are) or the CPU; ``"auto"`` → a CUDA
    GPU, else Apple's MPS, else the CPU; else the device named (it must exist here)."""
    if device is None:
        return fallback if fallback is not None else torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"The 'device' parameter of {owner} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. "
                         f"Got {device!r} instead.") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"The device {str(dev)!r} of {owner} is not available on this machine "
                         f"({torch.cuda.device_count()} CUDA devices); use device='auto' or 'cpu'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"The device 'mps' of {owner} is not available on this machine; use device='auto' or 'cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"The 'device' parameter of {owner} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. "
                         f"Got {device!r} instead.")
    return dev


def model_device(model) -> torch.device | None:
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return first.device if first is not None else None


class DatasetSource:
    """A map-style dataset read by index batches; ``take(rows)`` returns inputs and targets of
    shape ``rows.shape + ...``."""

    shared_order = False

    def __init__(self, dataset, name: str):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise TypeError(f"The {name!r} dataset is iterable-style; reglab needs a map-style Dataset (with "
                            "__getitem__ and __len__) or a DataLoader over it.")
        try:
            self.n = len(dataset)
        except TypeError:
            raise TypeError(f"The {name!r} dataset has no len(); give a map-style Dataset or a DataLoader.") from None
        if self.n == 0:
            raise ValueError(f"The {name!r} data is empty.")
        self.dataset, self.name = dataset, name
        first = dataset[0]
        if not isinstance(first, (tuple, list)) or len(first) != 2:
            got = (f"a {type(first).__name__} of {len(first)}" if isinstance(first, (tuple, list))
                   else f"a {type(first).__name__}" + (f" with keys {', '.join(map(repr, first))}" if isinstance(first, dict) else ""))
            raise TypeError(f"The {name!r} dataset must return (x, y) pairs; item 0 is {got}: wrap it in a Dataset "
                            f"whose __getitem__ returns (x, y).")
        _one_input(first[0], f"The {name!r} dataset's x")

    def fetch(self, index: list[int]):
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(index) if getitems is not None else [self.dataset[i] for i in index]
        x, y = default_collate(items)
        return torch.as_tensor(x), torch.as_tensor(y)

    def take(self, rows: torch.Tensor):
        x, y = self.fetch(rows.reshape(-1).tolist())
        return x.reshape(tuple(rows.shape) + tuple(x.shape[1:])), y.reshape(tuple(rows.shape) + tuple(y.shape[1:]))

    def targets(self) -> torch.Tensor:
        """Every target (for the task and class weights): the dataset's ``targets`` attribute when it
        has one (torchvision's datasets), else one pass over the items."""
        known = getattr(self.dataset, "targets", None)
        if known is not None and len(known) == self.n:
            return torch.as_tensor(np.asarray(known))
        return torch.cat([self.fetch(list(range(s, min(s + 1024, self.n))))[1] for s in range(0, self.n, 1024)])

    def sample(self, k: int) -> torch.Tensor:
        return self.fetch(list(range(min(k, self.n))))[0]

    def in_order(self, batch_size: int):
        for start in range(0, self.n, batch_size):
            yield self.fetch(list(range(start, min(start + batch_size, self.n))))


class LoaderSource(DatasetSource):
    """A DataLoader: its own batches and order, the same for every member."""

    shared_order = True

    def __init__(self, loader: DataLoader, name: str):
        self.loader, self.name = loader, name
        try:
            self.n = len(loader.dataset)
        except TypeError:
            self.n = None
        self.dataset = loader.dataset

    def epoch(self):
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(f"The {self.name!r} DataLoader must yield (x, y) batches; got {type(batch).__name__}.")
            _one_input(batch[0], f"The {self.name!r} DataLoader's x")
            yield torch.as_tensor(batch[0]), torch.as_tensor(batch[1])

    def _items(self):
        """The loader's map-style dataset read directly (so that reading targets or a sample does not
        draw from the loader's sampler and shift the order of its epochs), or None."""
        if isinstance(self.dataset, torch.utils.data.IterableDataset):
            return None
        try:
            return DatasetSource(self.dataset, self.name)
        except (TypeError, ValueError):
            return None

    def targets(self):
        items = self._items()
        if items is not None:
            return items.targets()
        return torch.cat([y.reshape(len(y), *y.shape[1:]) for _, y in self.epoch()])

    def sample(self, k: int):
        items = self._items()
        return items.sample(k) if items is not None else next(iter(self.epoch()))[0][:k]

    def in_order(self, batch_size: int):
        yield from self.epoch()


SEVERAL_INPUTS = ("reglab feeds forward() one tensor: concatenate the inputs into one (token ids as float "
                  "columns, .long() again in forward) and split it in forward().")


def _one_input(x, what: str) -> None:
    if isinstance(x, (tuple, list, dict)):
        raise TypeError(f"{what} is a {type(x).__name__} of {len(x)} (a model with several inputs); {SEVERAL_INPUTS}")


def source(data, name: str):
    """A :class:`DatasetSource`/:class:`LoaderSource` for a Dataset or DataLoader, or None for
    ``(X, y)`` pairs (and a two-tensor ``TensorDataset``, read as its tensors)."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return None
    if isinstance(data, DataLoader):
        return LoaderSource(data, name)
    if isinstance(data, Dataset):
        return DatasetSource(data, name)
    return None


class NpyRows(Dataset):
    """Rows of ``.npy`` files read from disk on demand — a dataset larger than memory.

    ``NpyRows("X.npy", "y.npy")`` reads each requested row with a positioned read (no memory map,
    so rows read are not kept resident in this process), ``x`` as float32 (or int64 for integer
    files when ``integers``) and ``y`` as stored.
    """

    def __init__(self, x_path, y_path, integers: bool = False):
        self.x = _NpyFile(x_path)
        self.y = np.load(y_path, mmap_mode="r", allow_pickle=False)
        if len(self.y) != self.x.shape[0]:
            raise ValueError(f"{x_path} has {self.x.shape[0]} rows but {y_path} has {len(self.y)}.")
        self.integers = integers
        self.targets = np.asarray(self.y)

    def __len__(self):
        return self.x.shape[0]

    def _x(self, rows):
        x = self.x.rows(rows)
        return torch.from_numpy(x.astype(np.int64 if self.integers else np.float32, copy=False))

    def __getitem__(self, i):
        return self._x([i])[0], torch.as_tensor(np.asarray(self.targets[i]))

    def __getitems__(self, index):
        x = self._x(index)
        y = torch.as_tensor(np.asarray(self.targets[np.asarray(index)]))
        return [(x[k], y[k]) for k in range(len(index))]


class _NpyFile:
    """A C-ordered .npy array read row by row with ``os.pread``."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path} is stored in Fortran order; save it C-ordered (np.ascontiguousarray).")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    def rows(self, index) -> np.ndarray:
        out = np.empty((len(index),) + tuple(self.shape[1:]), self.dtype)
        flat = out.reshape(len(index), -1).view(np.uint8)
        for k, i in enumerate(index):
            flat[k] = np.frombuffer(os.pread(self.fd, self.row_bytes, self.offset + int(i) * self.row_bytes), np.uint8)
        return out

    def __getstate__(self):   # DataLoader workers: reopen the file
        state = dict(self.__dict__)
        state.pop("fd")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.fd = os.open(self.path, os.O_RDONLY)
