"""``parse_time``: every form of a time target, and its rounding to whole seconds.

WAL timestamps are whole seconds, so a fractional target T selects the same commit
points as a whole one: ``ts > T`` is ``ts > floor(T)`` and, ``exclusive``,
``ts >= T`` is ``ts >= ceil(T)``.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gpu_pitr.format.entries import Insert
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.pipeline import parse_time, restore

T0 = int(datetime(2026, 11, 26, 10, 2, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("value", "inclusive", "exclusive"),
    [
        (T0, T0, T0),
        (np.int64(T0), T0, T0),
        (np.uint64(2**64 - 1), 2**64 - 1, 2**64 - 1),
        (-5, -5, -5),
        (T0 + 0.5, T0, T0 + 1),
        (np.float32(10.5), 10, 11),
        (Fraction(21, 2), 10, 11),
        # exactly, and whatever its exponent (its text "1.7952E+9" is refused)
        (Decimal("10.5"), 10, 11),
        (Decimal("1.7952E+9"), 1795200000, 1795200000),
        (Decimal(f"{T0}.000000000000000000001"), T0, T0 + 1),
        (-0.5, -1, 0),
        (str(T0), T0, T0),
        (f" {T0}\n", T0, T0),
        ("18446744073709551616", 2**64, 2**64),
        ("-5", -5, -5),
        ("10.5", 10, 11),
        ("10.", 10, 10),
        (".5", 0, 1),
        ("-0.5", -1, 0),
        # exact, where a float would round to a whole second
        (f"{T0}.000000000000001", T0, T0 + 1),
        ("2026-11-26T10:02:00Z", T0, T0),
        ("2026-11-26T10:02:00z", T0, T0),
        ("2026-11-26T11:02:00+01:00", T0, T0),
        ("2026-11-26T05:02:00-05:00", T0, T0),
        ("2026-11-26 10:02:00+00:00", T0, T0),
        ("2026-11-26T10:02:00.000+00:00", T0, T0),
        ("2026-11-26T10:02:00.5Z", T0, T0 + 1),
        ("2026-11-26T10:01:59.999999Z", T0 - 1, T0),
        ("2026-11-26T10:02:00.000001Z", T0, T0 + 1),
        # Past the microsecond: datetime drops these digits; the rounding must not.
        ("2026-11-26T10:02:00.0000001Z", T0, T0 + 1),
        ("2026-11-26T10:02:00.0000000Z", T0, T0),
        # ... in the basic form too, where no ":" comes before the seconds
        ("20261126T100200.0000001Z", T0, T0 + 1),
        ("2026-11-26T100200,0000001+0000", T0, T0 + 1),
        ("2026330T100200.0000000Z", T0, T0),
        ("1969-12-31T23:59:59.5Z", -1, 0),
        # ISO-8601 forms datetime.fromisoformat does not take: an ordinal date (day 330
        # of 2026 is 26 November), and the end of a day as 24:00
        ("2026-330T10:02:00Z", T0, T0),
        ("2026330T100200Z", T0, T0),
        ("2024-366T00:00Z", 1735603200, 1735603200),  # a leap year's last day
        ("2026-11-26T24:00:00Z", 1795737600, 1795737600),
        ("2026-11-25T24Z", 1795651200, 1795651200),
        ("2026-11-26T24:00:00.000+01:00", 1795734000, 1795734000),
        ("2026-W48-4T10:02:00Z", T0, T0),
        # A leap second: Unix time has none; the next second, as PostgreSQL takes it
        ("2016-12-31T23:59:60Z", 1483228800, 1483228800),
        ("2016-12-31T235960Z", 1483228800, 1483228800),
        ("2016-12-31T23:59:60.5Z", 1483228800, 1483228801),
        ("2016-12-31T23:59:60+01:00", 1483225200, 1483225200),
        # The last day datetime holds: the second after it is no OverflowError.
        ("9999-12-31T24:00Z", 253402300800, 253402300800),
        ("9999-12-31T23:59:60Z", 253402300800, 253402300800),
        ("9999-12-31T23:59:60.5Z", 253402300800, 253402300801),
        ("9999-365T24Z", 253402300800, 253402300800),
        (datetime(2026, 11, 26, 10, 2, tzinfo=UTC), T0, T0),
        (datetime(2026, 11, 26, 11, 2, 0, 1, tzinfo=timezone(timedelta(hours=1))), T0, T0 + 1),
    ],
)
def test_forms_and_rounding(value, inclusive: int, exclusive: int) -> None:
    assert parse_time(value) == inclusive
    assert parse_time(value, exclusive=False) == inclusive
    assert parse_time(value, exclusive=True) == exclusive
    assert type(parse_time(value)) is int


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("2026-11-26T10:02:00", "no time zone"),
        ("2026-11-26", "a date without a time of day"),
        # Not "no time zone (add Z ...)": the advice would not help.
        ("2026-11-26Z", "a date without a time of day"),
        ("2026-11-26+05:30", "a date without a time of day"),
        ("2026-W48-4Z", "a date without a time of day"),
        (date(2026, 11, 26), "a date without a time of day"),
        # datetime.fromisoformat takes any character between the date and the time:
        # the first would be 00:20:00, "1" between them.
        ("20261126100200Z", "T or a space"),
        ("2026-11-26X10:02Z", "T or a space"),
        ("9999-366T00:00Z", "neither"),  # not an OverflowError
        ("9999-999T00:00Z", "neither"),
        (datetime(2026, 11, 26, 10, 2), "no time zone"),
        ("yesterday", "neither"),
        ("2026-366T00:00Z", "neither"),  # 2026 has 365 days
        ("2026-000T00:00Z", "neither"),
        ("2026-11-26T24:00:01Z", "neither"),
        ("2026-11-26T24:30Z", "neither"),
        ("2016-12-31T23:59:61Z", "neither"),
        ("2016-12-31T23:60:00Z", "neither"),
        ("2026-330", "a date without a time of day"),
        # ISO-8601's 10.5 is 10:30 and 10:02.5 is 10:02:30; datetime.fromisoformat
        # (3.11) read them as 10:00:00.5 and 10:02:00.5, half an hour (a minute) off.
        ("2026-11-26T10.5Z", "a fraction of an hour or a minute"),
        ("2026-11-26T10,5Z", "a fraction of an hour or a minute"),
        ("2026-11-26T10:02.5Z", "a fraction of an hour or a minute"),
        ("2026-11-26T1002.5Z", "a fraction of an hour or a minute"),
        # No ISO-8601 zone: datetime.fromisoformat read the first as +00:00 (the half
        # second dropped).
        ("2026-11-26T10:02:00+00:00:00.5", "a zone other than"),
        ("2026-11-26T10:02:00+01:00:30", "a zone other than"),
        ("2026-11-26T10:02:00UTC", "a zone other than"),
        # datetime.fromisoformat took the week's Monday.
        ("2026-W48T10:02Z", "a week without its day"),
        ("2026W48T1002Z", "a week without its day"),
        ("", "neither"),
        ("10.5.1", "neither"),
        (".", "neither"),
        ("1e9", "neither"),
        ("+-5", "neither"),
        ("\u00b2", "neither"),  # a digit to str.isdigit, not to int()
        (float("nan"), "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("-Infinity"), "finite"),
        (float("inf"), "finite"),
    ],
)
def test_bad_targets_raise_value_error(value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_time(value)
    with pytest.raises(ValueError, match=match):
        parse_time(value, exclusive=True)


@given(st.floats(-1e12, 1e12, allow_nan=False))
def test_floats_round_down_inclusive_up_exclusive(t: float) -> None:
    assert parse_time(t) == math.floor(t)
    assert parse_time(t, exclusive=True) == math.ceil(t)


@given(st.integers(-(2**70), 2**70), st.text("0123456789", max_size=30), st.booleans())
def test_decimal_text_rounds_exactly(whole: int, digits: str, dot_first: bool) -> None:
    # Exact where a float is not: 20 significant digits, fractions of 1e-30.
    text = f"{whole}.{digits}" if digits or not dot_first else f"{whole}."
    exact = Fraction(f"{whole}{'.' + digits if digits else ''}")
    assert parse_time(text) == math.floor(exact)
    assert parse_time(text, exclusive=True) == math.ceil(exact)
    assert parse_time(f" {text}\n") == math.floor(exact)


@given(st.datetimes(timezones=st.just(UTC), min_value=datetime(1900, 1, 1)))
# Past ~2**37 s a float timestamp cannot hold microseconds: .timestamp() rounds this
# one up to a whole second, which the exact integer arithmetic below does not.
@example(datetime(6326, 1, 1, 0, 0, 0, 999985, tzinfo=UTC))
def test_datetimes_agree_with_their_iso_text(when: datetime) -> None:
    text = when.isoformat()
    for exclusive in (False, True):
        assert parse_time(text, exclusive) == parse_time(when, exclusive)
    since_epoch = when - datetime(1970, 1, 1, tzinfo=UTC)
    whole, rest = divmod(since_epoch, timedelta(seconds=1))
    assert parse_time(when) == whole
    assert parse_time(when, exclusive=True) == whole + (rest > timedelta(0))


def test_restore_rounds_a_fractional_target_by_exclusive(tmp_path: Path) -> None:
    # A commit point at each of T0-1, T0 and T0+1.
    wal = WalWriter(tmp_path / "wal", created=T0 - 10)
    for name, ts in (("a", T0 - 1), ("b", T0), ("c", T0 + 1)):
        wal.append(Insert(name, np.ones(2, np.float32), None, ts))
    wal.close()

    def ids(to_time, exclusive: bool) -> list[str]:
        index = restore(tmp_path / "wal", to_time=to_time, exclusive=exclusive, backend="cpu")
        assert index.report.target["value"] == parse_time(to_time, exclusive)
        return list(index.ids)

    # ts > T0 - 0.5 keeps a; ts >= T0 - 0.5 stops at b as well: a only either way.
    assert ids(T0 - 0.5, False) == ["a"]
    assert ids(T0 - 0.5, True) == ["a"]
    # ts > T0 + 0.5 stops at c; ts >= T0 + 0.5 also at c: a and b either way.
    assert ids(T0 + 0.5, False) == ["a", "b"]
    assert ids("2026-11-26T10:02:00.5Z", True) == ["a", "b"]
    # Whole targets: exclusive leaves out the commit point stamped exactly T.
    assert ids(T0, False) == ["a", "b"]
    assert ids(T0, True) == ["a"]


@pytest.mark.parametrize("kw, match", [
    ({"chunk_bytes": 0}, "chunk_bytes must be positive"),
    ({"chunk_bytes": -1}, "chunk_bytes must be positive"),
    ({"to_time": 5, "to_seq": 1}, "at most one of to_time, to_seq, to_transaction and to_position"),
    ({"to_seq": -1}, "outside 0..2"),
    # as --exclusive without --to-time or --to-seq on the command line
    ({"exclusive": True},
     "exclusive leaves out the target: give to_time, to_seq, to_transaction or to_position"),
    # not silently seq 2, seq 1 or second 1
    ({"to_seq": 2.7}, "to_seq must be an integer, not 2.7"),
    ({"to_seq": True}, "to_seq must be an integer, not True"),
    ({"to_seq": "2"}, "to_seq must be an integer, not '2'"),
    ({"to_time": True}, "time target True is not a time"),
    ({"backend": "gpu"}, r"unknown backend 'gpu' \(cpu, cuda or auto\)"),
    ({"base": "snap", "snapshots": "snaps"}, "give at most one of base and snapshots"),
])
def test_bad_arguments_raise_value_error_before_anything_is_read(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        restore(tmp_path / "no such directory", **kw)
