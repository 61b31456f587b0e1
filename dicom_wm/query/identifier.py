"""Request identifiers (C-FIND, C-MOVE, C-GET) parsed into a :class:`Query`.

dicom-wm implements the hierarchical search method (PS3.4 C.4.1.3.1):

* (0008,0052) Query/Retrieve Level must be one of the model's levels
  (the Study Root model has no PATIENT level);
* the unique key of every level *above* the query level must be present
  with a single value (Patient ID in the Patient Root model, Study Instance
  UID, Series Instance UID);
* at the query level any key of that level or of a higher level is matched;
  keys of lower levels, sequences, private and unknown attributes are not
  matched: a C-FIND returns them with zero length;
* C-MOVE / C-GET use the unique keys only; the query level's must be given
  (a list of UIDs is allowed there).

Anything else is :class:`~dicom_wm.query.errors.InvalidIdentifier` (0xA900).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.datadict import keyword_for_tag

from dicom_wm.query.errors import InvalidIdentifier
from dicom_wm.query.matching import Matcher, TextMatcher, UidMatcher, matcher_for
from dicom_wm.query.model import ATTRIBUTES, UNIQUE_KEYS, Attribute, InformationModel, Level, Service

__all__ = ["Key", "Condition", "Query", "parse_identifier"]

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
# Returned with our own values, never matched.
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
_SPECIAL = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY}


@dataclass(frozen=True)
class Key:
    """One element of a C-FIND request, to be answered in each response."""

    tag: int
    vr: str
    attribute: Attribute | None  # None: not supported, returned with zero length


@dataclass(frozen=True)
class Condition:
    """A key that is matched (not universal)."""

    attribute: Attribute
    tag: int
    matcher: Matcher
    value: str  # the request's value, for the audit log


@dataclass(frozen=True)
class Query:
    model: InformationModel
    level: Level
    service: Service
    conditions: tuple[Condition, ...]
    keys: tuple[Key, ...] = field(default=())  # C-FIND: what each response carries
    wants_availability: bool = False  # (0008,0056) Instance Availability was asked for

    def audit(self) -> dict[str, Any]:
        """What the audit log records of the request (no secrets)."""
        return {
            "model": self.model.value,
            "level": self.level.value,
            "keys": {c.attribute.keyword: c.value for c in self.conditions},
        }


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _level(identifier: Dataset, model: InformationModel) -> Level:
    raw = identifier.get(QUERY_RETRIEVE_LEVEL)
    text = str(raw.value).strip() if raw is not None and raw.value is not None else ""
    if not text:
        raise InvalidIdentifier(f"Query/Retrieve Level {_tag_name(QUERY_RETRIEVE_LEVEL)} is missing", (QUERY_RETRIEVE_LEVEL,))
    try:
        level = Level(text)
    except ValueError:
        raise InvalidIdentifier(
            f"Query/Retrieve Level {text[:16]!r} is not PATIENT, STUDY, SERIES or IMAGE", (QUERY_RETRIEVE_LEVEL,)
        ) from None
    if level not in model.levels:
        raise InvalidIdentifier(f"the {model.label} model has no {level.value} level", (QUERY_RETRIEVE_LEVEL,))
    return level


def _single(matcher: Matcher | None) -> bool:
    if isinstance(matcher, UidMatcher):
        return len(matcher.uids) == 1
    if isinstance(matcher, TextMatcher):
        return len(matcher.patterns) == 1 and not any(c in matcher.patterns[0] for c in "*?")
    return False


def parse_identifier(identifier: Dataset, model: InformationModel, service: Service) -> Query:
    """Parse a request identifier (see the module docstring).

    Raises :class:`InvalidIdentifier` naming the attribute and tag at fault.
    """
    try:
        level = _level(identifier, model)
        elements = [elem for elem in identifier]  # decodes every raw element
    except InvalidIdentifier:
        raise
    except Exception as exc:  # pydicom raises many types for malformed values
        raise InvalidIdentifier(f"the identifier cannot be decoded: {type(exc).__name__}: {exc}"[:200]) from None

    conditions: dict[str, Condition] = {}
    keys: list[Key] = []
    for elem in elements:
        tag = int(elem.tag)
        if elem.tag.element == 0 or elem.tag.is_private or tag in _SPECIAL:
            continue
        keyword = keyword_for_tag(tag)
        attribute = ATTRIBUTES.get(keyword) if elem.VR != "SQ" else None
        if attribute is None or model.level_of(attribute).depth > level.depth:
            keys.append(Key(tag, elem.VR, None))
            continue
        keys.append(Key(tag, elem.VR, attribute))
        is_unique = UNIQUE_KEYS.get(model.level_of(attribute)) == keyword
        if service is not Service.FIND and not is_unique:
            continue  # retrieve matches on unique keys only
        try:
            matcher = matcher_for(attribute, tag, elem.value)
        except InvalidIdentifier:
            raise
        except Exception as exc:  # a value pydicom could not convert
            raise InvalidIdentifier(f"{keyword} {_tag_name(tag)}: {type(exc).__name__}: {exc}"[:200], (tag,)) from None
        if matcher is not None:
            conditions[keyword] = Condition(attribute, tag, matcher, str(elem.value)[:256])

    # Unique keys: single values above the query level; retrieve needs the
    # query level's too.
    for upper in model.levels[: model.levels.index(level)]:
        keyword = UNIQUE_KEYS[upper]
        cond = conditions.get(keyword)
        if cond is None or not _single(cond.matcher):
            tag = ATTRIBUTE_TAGS[keyword]
            raise InvalidIdentifier(
                f"{keyword} {_tag_name(tag)} must be given as a single value for a {level.value} level "
                f"{service.value} in the {model.label} model",
                (tag,),
            )
    own = UNIQUE_KEYS[level]
    if service is not Service.FIND:
        cond = conditions.get(own)
        tag = ATTRIBUTE_TAGS[own]
        if cond is None:
            raise InvalidIdentifier(f"{own} {_tag_name(tag)} must be given for a {level.value} level {service.value}", (tag,))
        if isinstance(cond.matcher, TextMatcher) and any(c in p for p in cond.matcher.patterns for c in "*?"):
            raise InvalidIdentifier(f"{own} {_tag_name(tag)}: no wildcards in a {service.value}", (tag,))
    else:
        # Responses always carry the unique keys down to the query level.
        asked = {k.tag for k in keys}
        for upper in model.levels[: model.levels.index(level) + 1]:
            keyword = UNIQUE_KEYS[upper]
            tag = ATTRIBUTE_TAGS[keyword]
            if tag not in asked:
                keys.append(Key(tag, ATTRIBUTES[keyword].vr, ATTRIBUTES[keyword]))
    return Query(
        model, level, service, tuple(conditions.values()), tuple(keys),
        wants_availability=INSTANCE_AVAILABILITY in identifier,
    )


def _tags() -> dict[str, int]:
    from pydicom.datadict import tag_for_keyword

    out: dict[str, int] = {}
    for keyword in ATTRIBUTES:
        tag = tag_for_keyword(keyword)
        if tag is None:  # pragma: no cover - the table uses dictionary keywords only
            raise RuntimeError(f"{keyword} is not a DICOM keyword")
        out[keyword] = int(tag)
    return out


#: keyword -> tag of every supported attribute
ATTRIBUTE_TAGS: dict[str, int] = _tags()
