"""C-FIND and the instance selection of C-MOVE / C-GET, answered from the
``instances`` index table (never by opening files).

``model``       information models, levels, the attributes we match and return
``matching``    DICOM matching rules, in Python and as SQL
``identifier``  request identifier -> :class:`Query` (0xA900 errors)
``find``        a query against the index; the instances a retrieve names
``responses``   C-FIND response identifiers
``service``     one C-FIND end to end, with its ``query`` audit event
``studies``     the studies with instance counts per state
"""

from dicom_wm.query.errors import InvalidIdentifier, QueryRetrieveError
from dicom_wm.query.find import RetrieveItem, Selection, find_matches, select_instances
from dicom_wm.query.identifier import Condition, Key, Query, parse_identifier
from dicom_wm.query.model import ATTRIBUTES, UNIQUE_KEYS, Attribute, InformationModel, Kind, Level, Service, model_for_sop_class
from dicom_wm.query.responses import build_response
from dicom_wm.query.service import record_query, run_find, select_for_retrieve
from dicom_wm.query.studies import study_summaries

__all__ = [
    "ATTRIBUTES",
    "Attribute",
    "Condition",
    "InformationModel",
    "InvalidIdentifier",
    "Key",
    "Kind",
    "Level",
    "Query",
    "QueryRetrieveError",
    "RetrieveItem",
    "Selection",
    "Service",
    "UNIQUE_KEYS",
    "build_response",
    "find_matches",
    "model_for_sop_class",
    "parse_identifier",
    "record_query",
    "run_find",
    "select_for_retrieve",
    "select_instances",
    "study_summaries",
]
