"""Verify-before-send for C-MOVE and C-GET, and the destinations table.

``destinations``  add / change / remove / look up retrieve destinations
``egress``        one archived instance -> what may leave (or why not)
``pool``          verification processes working ahead of the sender
``audit``         ``sent`` / ``tamper_detected`` events and the security alert
"""

from dicom_wm.db.destinations import Destination, EgressPolicy
from dicom_wm.retrieve.audit import RetrieveAudit
from dicom_wm.retrieve.destinations import (
    DestinationInfo,
    add_destination,
    check_ae_title,
    list_destinations,
    lookup_destination,
    parse_policy,
    remove_destination,
    requester_policy,
)
from dicom_wm.retrieve.egress import TAMPER_VERDICTS, Prepared, Verdict, encode_part10, prepare
from dicom_wm.retrieve.pool import EgressPool, KeyCache, default_workers

__all__ = [
    "Destination",
    "DestinationInfo",
    "EgressPolicy",
    "EgressPool",
    "KeyCache",
    "Prepared",
    "RetrieveAudit",
    "TAMPER_VERDICTS",
    "Verdict",
    "add_destination",
    "check_ae_title",
    "default_workers",
    "encode_part10",
    "list_destinations",
    "lookup_destination",
    "parse_policy",
    "prepare",
    "remove_destination",
    "requester_policy",
]
