"""Byte accounting for what the buffer holds: numpy arrays, torch tensors and containers of them.

The buffer bounds its memory by these numbers, so they count what an object keeps alive: a torch
view holds its whole storage, and two views of one storage are counted once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ByteCount:
    """Bytes on the host (CPU memory) and on accelerators (CUDA and friends), kept apart because
    they are different budgets on a Jetson-less desktop and the same one on a Jetson."""

    host: int = 0
    device: int = 0

    @property
    def total(self) -> int:
        return self.host + self.device

    def __add__(self, other: ByteCount) -> ByteCount:
        return ByteCount(self.host + other.host, self.device + other.device)

    def __sub__(self, other: ByteCount) -> ByteCount:
        return ByteCount(self.host - other.host, self.device - other.device)


ZERO = ByteCount()


def measure(obj: Any) -> ByteCount:
    """Bytes that `obj` keeps alive. Raises TypeError for objects it cannot size, because a
    silent 0 would let an unbounded payload through the memory bound."""
    seen: set[tuple[str, int]] = set()
    return _measure(obj, seen)


def nbytes(obj: Any) -> int:
    """Total bytes (host + device) of `obj`; see `measure`."""
    return measure(obj).total


def _measure(obj: Any, seen: set[tuple[str, int]]) -> ByteCount:
    if obj is None or isinstance(obj, bool | int | float | complex | str):
        return ZERO  # scalars and names in a payload are noise next to the arrays
    if isinstance(obj, torch.Tensor):
        return _tensor_bytes(obj, seen)
    if isinstance(obj, np.ndarray):
        return _array_bytes(obj, seen)
    if isinstance(obj, bytes | bytearray):
        return ByteCount(host=len(obj))
    if isinstance(obj, memoryview):
        return ByteCount(host=obj.nbytes)
    if isinstance(obj, Mapping):
        return sum((_measure(v, seen) for v in obj.values()), ZERO)
    if isinstance(obj, list | tuple | set | frozenset):
        return sum((_measure(v, seen) for v in obj), ZERO)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.fields(obj)
        return sum((_measure(getattr(obj, f.name), seen) for f in fields), ZERO)
    size = getattr(obj, "nbytes", None)  # any other object that knows its own size
    if isinstance(size, int):
        return ByteCount(host=size)
    raise TypeError(f"cannot size a {type(obj).__name__} for the buffer's memory bound; "
                    "use tensors, arrays, containers of them, or give it an int `nbytes`")


def _tensor_bytes(t: torch.Tensor, seen: set[tuple[str, int]]) -> ByteCount:
    if t.device.type == "meta":
        return ZERO  # no memory behind it
    try:
        storage = t.untyped_storage()
        key, size = (t.device.type, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        key, size = (t.device.type, id(t)), t.numel() * t.element_size()
    if key in seen:
        return ZERO
    seen.add(key)
    return ByteCount(host=size) if t.device.type == "cpu" else ByteCount(device=size)


def _array_bytes(a: np.ndarray, seen: set[tuple[str, int]]) -> ByteCount:
    owner = a
    while isinstance(owner.base, np.ndarray):  # a view keeps its base array alive
        owner = owner.base
    key = ("numpy", id(owner))
    if key in seen:
        return ZERO
    seen.add(key)
    return ByteCount(host=owner.nbytes)
