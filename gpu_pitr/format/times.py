"""Time targets: what ``--to-time``, ``--since``/``--until`` and ``to_time=`` accept."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import SupportsIndex

U64_MAX = 2**64 - 1

#: What ``parse_time`` takes (``to_time=``, ``since=``): Unix seconds as a number (a
#: NumPy integer too), a zone-aware ``datetime``, or text. For type checkers: the
#: arguments that take one were unannotated, or said ``int``.
TimeTarget = float | SupportsIndex | Fraction | Decimal | str | datetime

#: The date of ISO-8601 text: ordinal, calendar or week, extended or basic.
_DATE = r"[0-9]{4}(?:-?[0-9]{3}|-[0-9]{2}-[0-9]{2}|[0-9]{4}|-?W[0-9]{2}(?:-?[0-9])?)"
#: A zone designator.
_ZONE = r"[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?"
#: The time of day after a date, basic or extended: hour, minute, second, a decimal
#: fraction (of whichever comes last) and what follows (the zone).
_CLOCK = rf"(?:{_DATE})[Tt ]([0-9]{{2}})(:?[0-9]{{2}})?(:?[0-9]{{2}})?([.,][0-9]*)?(.*)"


def parse_time(value: TimeTarget, exclusive: bool = False) -> int:
    """A time target as whole Unix seconds.

    ``value``: an int, a float (a Decimal too), a datetime with a zone, a decimal
    string of Unix seconds (``1795687320`` or ``1795687320.5``), or ISO-8601 text with
    a zone (``Z`` or ``+HH:MM``; a fraction on the seconds only). WAL timestamps are
    whole seconds, so a fractional target becomes the whole second that selects the
    same commit points: rounded down when inclusive (``ts > 10.5`` is ``ts > 10``), up
    when ``exclusive`` (``ts >= 10.5`` is ``ts >= 11``).

    Raises:
        ValueError: text that is neither, a date without a time of day, no time zone, or
            a number that is not finite.
    """
    import math
    import numbers
    import re
    from datetime import UTC

    if isinstance(value, bool):
        raise ValueError(f"time target {value!r} is not a time")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Rational):  # a Fraction: exact, and never infinite
        return math.ceil(value) if exclusive else math.floor(value)
    if isinstance(value, (numbers.Real, Decimal)):  # a Decimal is no numbers.Real
        if not value.is_finite() if isinstance(value, Decimal) else not math.isfinite(value):
            raise ValueError(f"time target {value!r} is not a finite number")
        # A Decimal exactly, as its text would be (1.7952E+9 has an exponent, which
        # the text is refused for).
        exact = Fraction(value) if isinstance(value, Decimal) else value
        return math.ceil(exact) if exclusive else math.floor(exact)
    below_micro = False  # digits past the microsecond, which datetime drops
    later = timedelta(0)  # a leap second's or 24:00's, which datetime may not hold
    if isinstance(value, datetime):
        when, text = value, str(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        if re.fullmatch(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)", text):
            exact = Fraction(text)  # exact: a float would round 19-digit seconds
            return math.ceil(exact) if exclusive else math.floor(exact)
        if re.fullmatch(rf"(?:{_DATE})(?:{_ZONE})?", text):
            raise ValueError(f"time target {text!r} is a date without a time of day (give "
                             "one, with a zone: ...T00:00Z)")
        if re.match(_DATE, text) and not re.match(rf"(?:{_DATE})(?:[Tt ]|$)", text):
            # datetime.fromisoformat takes any character there: 20261126100200Z would
            # be 00:20:00, with "1" between the date and the time.
            raise ValueError(f"time target {text!r} is neither Unix seconds nor ISO-8601 "
                             "(the date and the time go with T or a space between them)")
        if re.match(r"[0-9]{4}-?W[0-9]{2}[Tt ]", text):
            # datetime.fromisoformat takes the week's Monday: a guess, as a zone would be.
            raise ValueError(f"time target {text!r} is a week without its day (give one: "
                             "2026-W48-4T10:02Z)")
        clock = re.fullmatch(_CLOCK, text)
        if clock is not None:
            _, _, second, fraction, zone = clock.groups()
            if fraction is not None and second is None:
                # ISO-8601's 10.5 is 10:30, but datetime.fromisoformat (3.11) reads it
                # as 10:00:00.5: refused rather than restored half an hour off.
                raise ValueError(f"time target {text!r} has a fraction of an hour or a "
                                 "minute (write it in seconds: 10.5 is 10:30:00)")
            if zone.strip() and not re.fullmatch(_ZONE, zone.strip()):
                # +01:00:30 is no ISO-8601 zone, and datetime.fromisoformat drops a
                # fraction of a second there (+00:00:00.5 reads as +00:00).
                raise ValueError(f"time target {text!r} has a zone other than Z, ±HH:MM "
                                 "or ±HHMM")
            # Digits past the microsecond, which datetime drops (basic form too:
            # 100200.0000001).
            below_micro = fraction is not None and fraction[7:].strip("0") != ""
        zulu = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
        try:
            when, later = _from_iso(zulu)
        except ValueError:
            raise ValueError(
                f"time target {text!r} is neither Unix seconds nor ISO-8601") from None
    if when.utcoffset() is None:
        raise ValueError(f"time target {text!r} has no time zone (add Z or +HH:MM)")
    whole, part = divmod(when - datetime(1970, 1, 1, tzinfo=UTC) + later,
                         timedelta(seconds=1))
    return whole + 1 if exclusive and (part or below_micro) else whole


def _from_iso(text: str) -> tuple[datetime, timedelta]:
    """``datetime.fromisoformat``, and the ISO-8601 forms it does not take: an ordinal
    date (``2026-330T10:02Z``, ``2026330T1002Z``: the year's day 1-366), the end of
    a day as ``24:00`` (``24:00:00``, ``T24Z``: the next day's ``00:00``) and a leap
    second (``23:59:60Z``: Unix time has none, so the next second, as PostgreSQL takes
    it). Returned as a datetime and the time to add to it: a leap second's or the day
    of ``24:00``, which the datetime may not hold (``9999-12-31T24:00Z``)."""
    import calendar
    import re
    from datetime import date

    leap = re.search(r"(?:(?<=[Tt ][0-9]{2}:[0-9]{2}:)|(?<=[Tt ][0-9]{4}))60(?![0-9])", text)
    if leap is not None:
        when, later = _from_iso(text[:leap.start()] + "59" + text[leap.end():])
        return when, later + timedelta(seconds=1)

    ordinal = re.match(r"([0-9]{4})-?([0-9]{3})(?=[Tt ]|$)", text)
    if ordinal is not None:
        year, day = int(ordinal[1]), int(ordinal[2])
        if not 1 <= day <= 365 + calendar.isleap(year):
            raise ValueError(f"day {day} of {year}")
        when = date(year, 1, 1) + timedelta(days=day - 1)
        text = when.isoformat() + text[ordinal.end():]
    end_of_day = re.search(r"(?<=[Tt ])24(:?00(:?00([.,]0+)?)?)?(?=[Zz+-]|$)", text)
    if end_of_day is None:
        return datetime.fromisoformat(text), timedelta(0)
    midnight = text[:end_of_day.start()] + "00:00:00" + text[end_of_day.end():]
    return datetime.fromisoformat(midnight), timedelta(days=1)
