"""Dates in free text, as day intervals: the date a memory carries in its metadata, and the dates a question names.

Chat clients write dates in many forms ("1:56 pm on 8 May, 2023", "2023-05-08T13:56:00Z", "May 8, 2023",
a Unix timestamp). Retrieval only needs to know which day (or month, or year) is meant, so every date is
turned into a closed interval of proleptic Gregorian ordinals: a day is one ordinal, "May 2023" is 31 of them,
"2023" is 365. No dependency: the forms above cover what chat clients send, and a miss only loses a hint.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime

MONTHS = {
    name: i
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = r"(?P<month>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_ISO = re.compile(r"\b(?P<year>(?:19|20)\d\d)-(?P<month>[01]?\d)-(?P<day>[0-3]?\d)")
# Most specific first: a day with month and year, then month and year, then a month or a year alone.
_PATTERNS = [
    re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b", re.IGNORECASE),
    re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b", re.IGNORECASE),
    re.compile(rf"\b{_MONTH},?\s+{_YEAR}\b", re.IGNORECASE),
    re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\b", re.IGNORECASE),
    re.compile(rf"\b{_MONTH}\s+{_DAY}\b(?!\s*(?::|am|pm))", re.IGNORECASE),
    re.compile(rf"\b(?:in|during|of|since)\s+{_MONTH}\b", re.IGNORECASE),
    re.compile(rf"\b{_YEAR}\b"),
]

Interval = tuple[int, int]
"""A closed interval of date ordinals (``date.toordinal()``)."""


def month_interval(year: int, month: int) -> Interval:
    last = calendar.monthrange(year, month)[1]
    return date(year, month, 1).toordinal(), date(year, month, last).toordinal()


def _interval(year: int | None, month: int | None, day: int | None, default_year: int | None) -> Interval | None:
    year = year or default_year
    if year is None:
        return None
    try:
        if month is None:
            return date(year, 1, 1).toordinal(), date(year, 12, 31).toordinal()
        if day is None:
            return month_interval(year, month)
        d = date(year, month, day).toordinal()
    except ValueError:
        return None
    return d, d


def _groups(match: re.Match[str]) -> tuple[int | None, int | None, int | None]:
    found = match.groupdict()
    year = int(found["year"]) if found.get("year") else None
    month_text = found.get("month")
    month = None
    if month_text:
        month = int(month_text) if month_text.isdigit() else MONTHS.get(month_text.lower().rstrip("."))
    day = int(found["day"]) if found.get("day") else None
    return year, month, day


def mentioned(text: str, default_year: int | None = None) -> list[Interval]:
    """The dates ``text`` names, most specific reading of each span first; a date without a year takes
    ``default_year`` (and is skipped when that is None)."""
    out: list[Interval] = []
    taken: list[tuple[int, int]] = []
    for pattern in [_ISO, *_PATTERNS]:
        for match in pattern.finditer(text):
            span = match.span()
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            year, month, day = _groups(match)
            interval = _interval(year, month, day, default_year)
            if interval is not None:
                out.append(interval)
                taken.append(span)
    return out


def month_only(text: str) -> list[int]:
    """Months named without a year ("in June", "on 8 May"): the caller resolves them against the years its
    memories are in. Parts of a date with a year do not count."""
    dated = [m.span() for p in [_ISO, *_PATTERNS[:3]] for m in p.finditer(text)]
    out = []
    for pattern in _PATTERNS[3:6]:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < b and a < end for a, b in dated):
                continue
            year, month, _ = _groups(match)
            if year is None and month is not None:
                out.append(month)
    return out


def to_day(value: object) -> int | None:
    """The day a metadata value denotes, as an ordinal; None when it names no day.

    Accepts datetimes and dates, Unix timestamps (seconds or milliseconds), ISO strings and the free-text forms
    of ``mentioned`` (the first full date found wins).
    """
    if isinstance(value, datetime):
        return value.date().toordinal()
    if isinstance(value, date):
        return value.toordinal()
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value) / 1000.0 if value > 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, UTC).date().toordinal()
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date().toordinal()
    except ValueError:
        pass
    for start, end in mentioned(text):
        if start == end:
            return start
    return None


def distance(day: int, interval: Interval) -> int:
    """Days from ``day`` to the nearest day of ``interval`` (0 inside it)."""
    start, end = interval
    if day < start:
        return start - day
    if day > end:
        return day - end
    return 0


def year_of(day: int) -> int:
    return date.fromordinal(day).year
