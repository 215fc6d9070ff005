"""The WAL entry types, one dataclass per variant of oxirs-vec's ``WalEntry`` enum.

Vectors stay float32 NumPy arrays end to end so NaN payloads, -0.0 and infinities
survive bit for bit; ``Insert``/``Update`` compare vectors by their bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    CHECKPOINT,
    COMMIT_TRANSACTION,
    DELETE,
    INSERT,
    UPDATE,
)


def as_vector(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """``values`` as a 1-d float32 array (a float32 array is kept as is, bits untouched).

    Raises:
        ValueError: if ``values`` is not one-dimensional.
    """
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1:
        raise ValueError(f"a vector must be 1-d, got shape {vector.shape}")
    return vector


@dataclass(eq=False)
class _VectorEntry:
    """Fields shared by ``Insert`` and ``Update``."""

    id: str
    vector: np.ndarray
    metadata: dict[str, str] | None
    timestamp: int

    def __post_init__(self) -> None:
        self.vector = as_vector(self.vector)

    def __eq__(self, other: object) -> bool:
        # Bytes, not values: NaN != NaN and -0.0 == 0.0 would both be wrong here.
        if type(other) is not type(self):
            return NotImplemented
        return (
            self.id == other.id
            and self.vector.tobytes() == other.vector.tobytes()
            and self.metadata == other.metadata
            and self.timestamp == other.timestamp
        )

    __hash__ = None  # mutable, like the other entries


@dataclass(eq=False)
class Insert(_VectorEntry):
    """``WalEntry::Insert``: id's vector and metadata become these."""

    variant: ClassVar[int] = INSERT


@dataclass(eq=False)
class Update(_VectorEntry):
    """``WalEntry::Update``: id's vector becomes this; metadata only if not None."""

    variant: ClassVar[int] = UPDATE


@dataclass
class Delete:
    """``WalEntry::Delete``."""

    variant: ClassVar[int] = DELETE
    id: str
    timestamp: int


@dataclass
class Batch:
    """``WalEntry::Batch``: nested entries applied as one step."""

    variant: ClassVar[int] = BATCH
    entries: list
    timestamp: int

    def __post_init__(self) -> None:
        # A tuple would never compare equal to the list the decoder builds.
        self.entries = list(self.entries)


@dataclass
class Checkpoint:
    """``WalEntry::Checkpoint``; ``sequence_number`` is the field, not the record's."""

    variant: ClassVar[int] = CHECKPOINT
    sequence_number: int
    timestamp: int


@dataclass
class BeginTransaction:
    """``WalEntry::BeginTransaction``."""

    variant: ClassVar[int] = BEGIN_TRANSACTION
    transaction_id: int
    timestamp: int


@dataclass
class CommitTransaction:
    """``WalEntry::CommitTransaction``."""

    variant: ClassVar[int] = COMMIT_TRANSACTION
    transaction_id: int
    timestamp: int


@dataclass
class AbortTransaction:
    """``WalEntry::AbortTransaction``."""

    variant: ClassVar[int] = ABORT_TRANSACTION
    transaction_id: int
    timestamp: int


WalEntry = (
    Insert
    | Update
    | Delete
    | Batch
    | Checkpoint
    | BeginTransaction
    | CommitTransaction
    | AbortTransaction
)

# Indexed by variant number: ENTRY_TYPES[entry.variant] is type(entry).
ENTRY_TYPES: tuple[type, ...] = (
    Insert,
    Update,
    Delete,
    Batch,
    Checkpoint,
    BeginTransaction,
    CommitTransaction,
    AbortTransaction,
)
