"""DICOM attribute matching (PS3.4 C.2.2.2), in Python and as SQL.

Each :class:`Matcher` has two halves that must agree:

``matches(value)``
    the exact rule, applied to an index value in Python;
``sql(column)``
    a condition that is true for *at least* every value ``matches`` accepts
    (or ``None``), so the database narrows the rows with its indexes and
    Python has the last word. SQL's ``LIKE`` is case-insensitive on SQLite
    and case-sensitive on PostgreSQL, which is why the exact rule lives in
    Python.

Matching rules:

* **universal**: an empty value, or a lone ``*``, matches everything (no
  matcher at all);
* **single value**: exact and case-sensitive, except person names (PN),
  which match case-insensitively (PS3.4 C.2.2.2.1 allows it);
* **wildcard**: ``*`` is any run of characters, ``?`` any one character
  (text and PN attributes; not UIDs, dates, times or numbers);
* **list of UIDs**: any of the values (UI attributes);
* **range**: ``a-b``, ``-b``, ``a-`` for dates (DA, inclusive) and times
  (TM). A time is compared as a point in the day: the lower end of a range
  is padded with zeros and the upper end with the end of the period it
  names (``-13`` is up to 13:59:59.999999); a single time value is the
  period it names (``12`` is 12:00 to 12:59:59.999999);
* several values (backslash) in any other attribute: any of them matches.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, or_
from sqlalchemy.sql.elements import ColumnElement

from dicom_wm.query.errors import InvalidIdentifier
from dicom_wm.query.model import Attribute, Kind

__all__ = [
    "Matcher",
    "UidMatcher",
    "TextMatcher",
    "IntMatcher",
    "DateMatcher",
    "TimeMatcher",
    "matcher_for",
    "normalise_time",
]

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DA = re.compile(r"\d{8}")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


# most OR-ed conditions one key puts in SQL (SQLite's expression depth limit is 1000)
MAX_SQL_TERMS = 100


class Matcher(ABC):
    """One key's matching rule (see the module docstring)."""

    @abstractmethod
    def matches(self, value: Any) -> bool: ...

    @abstractmethod
    def sql(self, column: Any) -> ColumnElement[bool] | None: ...


@dataclass(frozen=True)
class UidMatcher(Matcher):
    uids: frozenset[str]

    def matches(self, value: Any) -> bool:
        return value is not None and str(value) in self.uids

    def sql(self, column: Any) -> ColumnElement[bool]:
        return column.in_(sorted(self.uids))


@dataclass(frozen=True)
class IntMatcher(Matcher):
    values: frozenset[int]

    def matches(self, value: Any) -> bool:
        return value is not None and int(value) in self.values

    def sql(self, column: Any) -> ColumnElement[bool]:
        return column.in_(sorted(self.values))


def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _like_pattern(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append("%" if ch == "*" else "_" if ch == "?" else ch)
    return "".join(out)


@dataclass(frozen=True)
class TextMatcher(Matcher):
    """Single values and wildcards; any of ``patterns`` may match."""

    patterns: tuple[str, ...]
    ignore_case: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regexes", tuple(_wildcard_regex(p, self.ignore_case) for p in self.patterns))

    def matches(self, value: Any) -> bool:
        if value is None:
            return False
        text = str(value)
        return any(r.fullmatch(text) for r in self._regexes)  # type: ignore[attr-defined]

    def sql(self, column: Any) -> ColumnElement[bool] | None:
        if not all(p.isascii() for p in self.patterns):
            return None  # SQLite folds ASCII case only: let Python decide
        wild = [p for p in self.patterns if "*" in p or "?" in p]
        if len(wild) > MAX_SQL_TERMS:
            return None  # SQLite refuses expressions over 1000 deep: let Python decide
        exact = sorted({p.lower() if self.ignore_case else p for p in self.patterns if p not in wild})
        conditions = [column.ilike(_like_pattern(p), escape="\\") for p in wild]
        if exact:  # one IN list however many values a multi-valued key has
            conditions.append((func.lower(column) if self.ignore_case else column).in_(exact))
        return or_(*conditions)


@dataclass(frozen=True)
class DateMatcher(Matcher):
    """Inclusive ``YYYYMMDD`` ranges (a single date is a one-day range)."""

    ranges: tuple[tuple[str | None, str | None], ...]

    def matches(self, value: Any) -> bool:
        if value is None or not _DA.fullmatch(str(value).strip()):
            return False
        v = str(value).strip()
        return any((lo is None or v >= lo) and (hi is None or v <= hi) for lo, hi in self.ranges)

    def sql(self, column: Any) -> ColumnElement[bool] | None:
        if len(self.ranges) > MAX_SQL_TERMS:
            return None  # see TextMatcher.sql
        conditions = []
        for lo, hi in self.ranges:
            parts = []
            if lo is not None:
                parts.append(column >= lo)
            if hi is not None:
                parts.append(column <= hi)
            conditions.append(parts[0] & parts[1] if len(parts) == 2 else parts[0])
        return or_(*conditions)


def normalise_time(value: str, *, upper: bool = False) -> str | None:
    """``HH[MM[SS[.F{1,6}]]]`` as 12 digits ``HHMMSSFFFFFF``: missing parts
    are zeros, or (``upper``) the last instant of the period the value names.
    ``None`` for anything else (including ACR-NEMA ``HH:MM:SS``)."""
    m = _TM.fullmatch(value.strip())
    if m is None:
        return None
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm is not None and int(mm) > 59) or (ss is not None and int(ss) > 60):
        return None
    fill = "9" if upper else "0"
    top = "59" if upper else "00"
    return f"{hh}{mm or top}{ss or top}{(frac or '').ljust(6, fill)}"


@dataclass(frozen=True)
class TimeMatcher(Matcher):
    """Inclusive ranges of normalised times (see :func:`normalise_time`)."""

    ranges: tuple[tuple[str | None, str | None], ...]

    def matches(self, value: Any) -> bool:
        if value is None:
            return False
        v = normalise_time(str(value))
        if v is None:
            return False
        return any((lo is None or v >= lo) and (hi is None or v <= hi) for lo, hi in self.ranges)

    def sql(self, column: Any) -> None:
        return None  # stored times have mixed precision: compare in Python


# -- building matchers from request values -----------------------------------------------


def _values(raw: Any) -> list[str]:
    """A request element's value as a list of stripped strings ([] if empty)."""
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        items = [str(v) for v in raw]
    else:
        text = str(raw)
        items = text.split("\\") if text else []
    items = [v.strip().rstrip("\0") for v in items]
    return items if any(items) else []


def _bad(attribute: Attribute, tag: int, why: str) -> InvalidIdentifier:
    return InvalidIdentifier(f"{attribute.keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}): {why}", (tag,))


def _date_range(attribute: Attribute, tag: int, value: str) -> tuple[str | None, str | None]:
    def check(d: str) -> str:
        if not _DA.fullmatch(d):
            raise _bad(attribute, tag, f"{d!r} is not a date YYYYMMDD")
        try:
            date(int(d[:4]), int(d[4:6]), int(d[6:]))
        except ValueError:
            raise _bad(attribute, tag, f"{d!r} is not a calendar date") from None
        return d

    if value.count("-") > 1:
        raise _bad(attribute, tag, f"{value!r} is not a date YYYYMMDD or a range of them")
    if "-" in value:
        lo, _, hi = value.partition("-")
        if not lo and not hi:
            raise _bad(attribute, tag, "a range needs at least one end")
        return (check(lo) if lo else None, check(hi) if hi else None)
    d = check(value)
    return (d, d)


def _time_range(attribute: Attribute, tag: int, value: str) -> tuple[str | None, str | None]:
    def check(t: str, upper: bool) -> str:
        n = normalise_time(t, upper=upper)
        if n is None:
            raise _bad(attribute, tag, f"{t!r} is not a time HH[MM[SS[.FFFFFF]]]")
        return n

    if value.count("-") > 1:
        raise _bad(attribute, tag, f"{value!r} is not a time or a range of them")
    if "-" in value:
        lo, _, hi = value.partition("-")
        if not lo and not hi:
            raise _bad(attribute, tag, "a range needs at least one end")
        return (check(lo, False) if lo else None, check(hi, True) if hi else None)
    return (check(value, False), check(value, True))


def matcher_for(attribute: Attribute, tag: int, raw: Any) -> Matcher | None:
    """The matcher for one request key, ``None`` for universal matching.

    Raises :class:`InvalidIdentifier` for a value the attribute's matching
    rules do not allow (naming the attribute, its tag and the value)."""
    values = _values(raw)
    if not values or values == ["*"]:
        return None
    kind = attribute.kind
    if kind is Kind.COUNT:
        return None  # return keys only
    if kind is Kind.UID:
        for v in values:
            if "*" in v or "?" in v:
                raise _bad(attribute, tag, "wildcards are not allowed in UIDs")
            if len(v) > 64 or not _UID.fullmatch(v):
                raise _bad(attribute, tag, f"{v[:70]!r} is not a UID")
        return UidMatcher(frozenset(values))
    if kind is Kind.INT:
        try:
            return IntMatcher(frozenset(int(v) for v in values))
        except ValueError:
            raise _bad(attribute, tag, f"{raw!s:.70} is not a number (no wildcards or ranges here)") from None
    if kind is Kind.DATE:
        return DateMatcher(tuple(_date_range(attribute, tag, v) for v in values))
    if kind is Kind.TIME:
        return TimeMatcher(tuple(_time_range(attribute, tag, v) for v in values))
    # TEXT, PN, MODALITIES
    patterns = tuple(v for v in values if v)
    if any(p == "*" for p in patterns):
        return None
    return TextMatcher(patterns, ignore_case=kind is Kind.PN)

