"""The restore report (SPEC section 3, "The report")."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

_SCALARS = (str, int, float, bool, type(None))

#: A list longer than this is shown by ``short_repr`` as its first items and a count.
REPR_ITEMS = 10


def _short(value) -> str:
    """``repr(value)`` with each list or tuple of more than ``REPR_ITEMS`` items cut to
    its first ones and a count of the rest, however deep (and long ``bytes`` to a count)."""
    if isinstance(value, (list, tuple)):
        shown = [_short(v) for v in value[:REPR_ITEMS]]
        if len(value) > REPR_ITEMS:
            shown.append(f"... ({len(value) - REPR_ITEMS:,} more)")
        inner = ", ".join(shown) + ("," if isinstance(value, tuple) and len(value) == 1 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (bytes, bytearray)) and len(value) > 64:
        return f"<{len(value):,} bytes>"
    return repr(value)


def short_repr(obj) -> str:
    """A dataclass's repr, with its lists cut as ``_short`` cuts them: a report of a
    restore past 1.4M skipped records (or a diff of a million ids) shown in a notebook
    or a log line printed every entry, hundreds of MB of text."""
    return f"{type(obj).__name__}(" + ", ".join(
        f"{f.name}={_short(getattr(obj, f.name))}" for f in fields(obj) if f.repr) + ")"


# The message of a restore whose index holds no id (a shard's: of itself).
EMPTY_INDEX_NOTE = "the index is empty at the stop point"


def _plain(value):
    """A deep copy of the report's plain data (dicts, lists, tuples, scalars), as
    ``dataclasses.asdict`` makes, without its per-object checks and ``deepcopy``: 1.4M
    skipped records (16 MiB of zeros read with --skip-corrupt) took 25 s of a 32 s
    restore in ``asdict``."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {k: v if isinstance(v, _SCALARS) else _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(v if isinstance(v, _SCALARS) else _plain(v) for v in value)
    return copy.deepcopy(value)


@dataclass
class RestoreReport:
    """What a restore did: target, stop point, counts, damage, bytes and time per stage.

    Damage lists hold dicts with ``file``, ``offset`` (a byte offset in that
    file), ``seq`` where a record is known, and ``what``. ``message``: notes for a
    person; ``warnings``: those a person must not miss (docs/api.md lists the
    kinds), which the command line prints on stderr even with ``--quiet``, after each
    torn tail and skipped record or file.
    """

    target: dict
    backend: str = "cpu"
    stop: dict = field(default_factory=lambda: {"reason": "end_of_log"})
    # The timestamp of the last commit point applied (a base's counts), None if none:
    # what the index is as of (PostgreSQL's "last completed transaction was at log time").
    last_commit_timestamp: int | None = None
    base: dict | None = None
    # A restore of one shard of the ids (``id_shard``): {"index", "count"}.
    id_shard: dict | None = None
    segments: int = 0
    records_read: int = 0
    commit_points_applied: int = 0
    inserts: int = 0
    updates: int = 0
    updates_of_missing: int = 0
    deletes: int = 0
    deletes_of_missing: int = 0
    transactions: dict = field(
        default_factory=lambda: {"committed": 0, "aborted": 0, "in_flight_discarded": 0}
    )
    anomalies: list = field(default_factory=list)
    torn_tails: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    damage_after_stop: list = field(default_factory=list)
    trailing_bytes: list = field(default_factory=list)
    first_seq: int | None = None
    # Records missing inside the log read up to the stop (jumps forward in seq):
    # {"jumps", "missing", "first"}, first the record the first jump lands on
    # ({file, offset, seq, previous}) or None. A snapshot keeps it in its stored
    # report, so that a restore from it knows what its own log lacked.
    seq_jumps: dict = field(
        default_factory=lambda: {"jumps": 0, "missing": 0, "first": None})
    incomplete_history_allowed: bool = False
    # False: the restore stopped reading at its stop record (``read_after_stop``), so
    # the log after it was not looked at, and the counts cover the log up to it.
    read_after_stop: bool = True
    ids: int = 0
    dim: int | None = None
    bytes_read: int = 0
    message: str = ""
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    __repr__ = short_repr

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the report (a copy: later changes to the report
        do not show in it)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, doc: dict) -> RestoreReport:
        """The report ``to_dict`` gave (keys it does not know are left out)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in doc.items() if k in names}
        known.setdefault("target", {})
        return cls(**known)
