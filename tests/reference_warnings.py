"""A deliberately simple model of WHEN a restore warns, and what ``strict`` refuses.

``tests/reference.py`` says what a restore restores; it does not model the report's
warnings, nor ``strict=True``, which refuses some of them (``TargetNotReachedError``).
This says which warning categories a restore owes, written from docs/semantics.md
("A target the log does not settle is restored as SPEC section 3 says, with a
warning"), docs/api.md (the report's ``warnings`` and ``strict``) and docs/damage.md
(seq jumping forward), not from ``gpu_pitr.pipeline``. It models the log the
enumerations write (no base snapshot, no memory budget, no entry named like a segment
that is not a file, no older-format records): the categories are

- ``seq_jump`` (refused by strict): among the records read up to the stop point (the
  stop record included; zero-filled records, seq 0 and no payload, take no part), one
  whose seq is more than one past the seq of the record before it;
- ``time_not_reached`` (refused): a time target, at least one segment file, the stop at
  the end of the log, and the last record that decodes, in log order, not stamped past
  T (``exclusive``: not at or past T), or no record that decodes at all;
- ``seq_repeated``: a seq target N reached, the log read on after it
  (``read_after_stop``), and more than one record of the log numbered N;
- ``txn_again``: a transaction target X reached, the log read on after it, and a
  BeginTransaction X (a record of its own, not one nested in a batch, which carries no
  data) after the record that ends X's first use;
- ``joined_after_restart``: the stop at the end of the log, and a transaction open
  there with a data record (or batch) of its own after a writer restart that came
  after its BeginTransaction; a restart is a record whose seq is not above the seq of
  the record before it (the writer numbers one after another, from 0 again when
  reopened);
- ``gap``: ``allow_incomplete_history`` and the first record of the log (not a
  zero-filled one skipped with ``skip_corrupt``) not numbered 0;
- ``no_segments`` (refused): no segment file at all;
- ``not_segment``: an entry named like a segment that is not read, one warning each:
  a directory, FIFO, socket or device (or a link to one), or a name that is a
  segment's but for the case of its letters (docs/damage.md).

A restore that fails (``reference.restore`` says how) owes no warning; ``strict`` does
not change which error it is. Categories of the product's texts: ``classify``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

import reference

#: The categories strict refuses (docs/api.md, ``warnings``: "With strict=True ...
#: TargetNotReachedError instead").
REFUSED = frozenset({"seq_jump", "time_not_reached", "no_segments", "older_format"})

#: The product's warning texts, told apart by how each begins (``classify``).
_KINDS = (
    ("seq_jump", re.compile(r"records are missing from the log: the seq jumps ")),
    ("base_missing", re.compile(r"records are missing from the log the base snapshot ")),
    ("time_not_reached", re.compile(r"the log ends before the target ")),
    ("seq_repeated", re.compile(r"seq \d+ occurs \d+ times in the log ")),
    ("txn_again", re.compile(r"transaction \d+ begins again later in the log ")),
    ("joined_after_restart",
     re.compile(r"transaction \d+ is still open at the end of the log, and \d+ of its ")),
    ("not_segment", re.compile(r"[^:]+: named like a segment file")),
    # (not modelled: whether records left bytes over as whole bincode 1.3 entries)
    ("older_format", re.compile(r"\d+ records? left bytes over after the payload")),
    ("gap", re.compile(r"incomplete history, restored as allowed: ")),
    ("no_segments", re.compile(r"nothing to restore: ")),
    ("base_no_log", re.compile(r"the base snapshot's state alone, no log after it")),
    ("base_skipped", re.compile(r"the base snapshot .+ was restored past damage with ")),
    # (``snapshot.choose``: a damaged one passed over, tried or not)
    ("snapshot_damaged", re.compile(
        r"snapshot .+ (is damaged|was written by a newer gpu-pitr) \(.+; "
        r"(passed over|trying an older one|no older one serves)$", re.S)),
)


def classify(text: str) -> str:
    """The category of one warning text; ``other: ...`` for one this does not know."""
    for kind, pattern in _KINDS:
        if pattern.match(text):
            return kind
    return f"other: {text[:60]}"


def refused_categories(message: str) -> list[str]:
    """The categories a ``TargetNotReachedError``'s text names: its warnings joined with
    "; also: ", then " (strict: ...)"."""
    body = message.split(" (strict: the state asked for was not reached")[0]
    return [classify(part) for part in body.split("; also: ")]


@dataclass
class Verdict:
    error: reference.RefError | None  # the restore fails (no warning owed), else None
    #: one category a warning owed, sorted (``not_segment`` once an entry, the others once)
    categories: tuple = ()

    @property
    def refused(self) -> tuple:
        """What ``strict=True`` refuses: none where the restore fails anyway."""
        return tuple(c for c in self.categories if c in REFUSED)


def _zero_filled(item: tuple) -> bool:
    return item[4] == 0 and not item[5]


def _decoded(item: tuple) -> tuple | None:
    try:
        return reference.decode_payload(item[5])[0]
    except reference.Undecodable:
        return None


def warnings_model(wal_dir, *, read_after_stop: bool = True, **kw) -> Verdict:
    """The warning categories a restore of ``wal_dir`` with ``kw`` (``reference.restore``'s
    arguments) owes, and whether it fails."""
    ref = reference.restore(wal_dir, **kw)
    if ref.error is not None:
        return Verdict(ref.error)
    items = reference.frame_log(wal_dir)
    records = [i for i in items if i[0] == "record"]
    segments = [n for n in os.listdir(wal_dir) if reference._NAME.fullmatch(n)
                and os.path.isfile(os.path.join(wal_dir, n))]
    out = set()
    if not segments:
        out.add("no_segments")
    named = _not_segments(wal_dir)
    at_end = ref.stop.get("reason") != "target"
    where = {(r[1], r[2]): k for k, r in enumerate(records)}
    stop = len(records) - 1 if at_end else where[(ref.stop["file"], ref.stop["offset"])]

    # Records missing inside the log: a jump forward up to the stop record, inclusive.
    prev = None
    for r in records[:stop + 1]:
        if _zero_filled(r):
            continue
        if prev is not None and r[4] > prev + 1:
            out.add("seq_jump")
        prev = r[4]

    t = kw.get("to_time")
    if t is not None and segments and at_end:
        stamps = [e[-1] for e in map(_decoded, records) if e is not None]
        past = stamps and (stamps[-1] >= t if kw.get("exclusive") else stamps[-1] > t)
        if not past:
            out.add("time_not_reached")

    n = kw.get("to_seq")
    if n is not None and not at_end and read_after_stop:
        if sum(r[4] == n for r in records) > 1:
            out.add("seq_repeated")

    x = kw.get("to_transaction")
    if x is not None and not at_end and read_after_stop:
        for r in records[stop + 1:]:
            e = _decoded(r)
            if e is not None and e[0] == "begin" and e[1] == x:
                out.add("txn_again")

    if at_end:
        out |= _joined_after_restart(records)

    if kw.get("allow_incomplete_history"):
        first = next((r for r in records if not (kw.get("skip_corrupt") and _zero_filled(r)
                                                 and n != 0)), None)
        if first is not None and first[4] != 0:
            out.add("gap")
    return Verdict(None, tuple(sorted([*out, *(["not_segment"] * len(named))])))


def _not_segments(wal_dir) -> list[str]:
    """The entries named like a segment that a restore does not read."""
    out = []
    for name in os.listdir(wal_dir):
        if not re.fullmatch(r"wal-[0-9a-f]{16}\.log", name, re.IGNORECASE):
            continue
        path = os.path.join(wal_dir, name)
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:  # a dangling link: a segment that cannot be read, not this
            regular = True
        if not reference._NAME.fullmatch(name) or not regular:
            out.append(name)
    return out


def _joined_after_restart(records: list) -> set:
    """``{"joined_after_restart"}`` where a transaction open at the end of the log has a
    record of its own after a writer restart that came after its begin."""
    open_txns: list[list] = []  # [id, a restart seen since its begin, joined after one]
    prev = None
    for r in records:
        restarted = prev is not None and r[4] <= prev and not _zero_filled(r)
        if not _zero_filled(r):
            prev = r[4]
        if restarted:
            for txn in open_txns:
                txn[1] = True
        e = _decoded(r)
        if e is None:
            continue
        if e[0] in ("insert", "update", "delete", "batch") and open_txns:
            if open_txns[-1][1]:
                open_txns[-1][2] = True
        elif e[0] == "begin" and all(t[0] != e[1] for t in open_txns):
            open_txns.append([e[1], False, False])
        elif e[0] in ("commit", "abort"):
            open_txns = [t for t in open_txns if t[0] != e[1]]
    return {"joined_after_restart"} if any(t[2] for t in open_txns) else set()


def dropping(real, prefix: str, refuse: bool = True):
    """``pipeline._restore_warnings`` made wrong, for the tests that show a comparison
    with the model is not vacuous: the warnings that begin with ``prefix`` left out
    (``refuse`` False: and nothing left for strict to refuse)."""
    def dropped(run, report, target, memory_budget=None, unreached=None):
        mine = []
        out = real(run, report, target, memory_budget, mine)
        if unreached is not None and refuse:
            unreached += mine
        return [t for t in out if not t.startswith(prefix)]

    return dropped
