"""C-FIND response identifiers: the requested keys, filled in."""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_wm.query.identifier import INSTANCE_AVAILABILITY, QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE, Query
from dicom_wm.query.model import Kind

__all__ = ["build_response", "UTF8"]

UTF8 = "ISO_IR 192"


def _value(kind: Kind, value: Any) -> Any:
    if value is None or value == []:
        return None
    if kind in (Kind.INT, Kind.COUNT):
        return int(value)
    if kind is Kind.MODALITIES:
        return list(value)
    return str(value)


def build_response(query: Query, values: dict[str, Any], retrieve_ae_title: str) -> Dataset:
    """One pending response: every key of the request (supported ones with
    the entity's value, the others with zero length), the unique keys down
    to the query level, the level, and where to retrieve from. Text with
    characters beyond ASCII is sent as UTF-8 (ISO_IR 192)."""
    ds = Dataset()
    non_ascii = False
    for key in query.keys:
        if key.attribute is None:
            empty: Any = Sequence() if key.vr == "SQ" else None
            ds[key.tag] = DataElement(key.tag, key.vr, empty)
            continue
        value = _value(key.attribute.kind, values.get(key.attribute.keyword))
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds[key.tag] = DataElement(key.tag, key.attribute.vr, value)
    ds[QUERY_RETRIEVE_LEVEL] = DataElement(QUERY_RETRIEVE_LEVEL, "CS", query.level.value)
    ds[RETRIEVE_AE_TITLE] = DataElement(RETRIEVE_AE_TITLE, "AE", retrieve_ae_title)
    if query.wants_availability:
        ds[INSTANCE_AVAILABILITY] = DataElement(INSTANCE_AVAILABILITY, "CS", "ONLINE")
    if non_ascii:
        ds.SpecificCharacterSet = UTF8
    return ds
