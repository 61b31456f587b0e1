"""The ingest pipeline: durable reception, queueing, the watermark task.

``receive``   spool file + RECEIVED row (the C-STORE handler's library half)
``dispatch``  committed ids -> backend; re-queue on start and when stuck
``pool``      the embedded backend (local worker processes)
``task``      the task function shared by the embedded pool and Celery
``runtime``   start-up chores (data dir, schema, key store, spool clean-up)
``report``    status / show data
"""

from dicom_wm.ingest.dispatch import Backend, Dispatcher, pending_instance_ids
from dicom_wm.ingest.errors import (
    CallingAENotAllowed,
    CannotUnderstand,
    DatabaseUnavailable,
    DatasetMismatch,
    IngestError,
    InvalidUID,
    StorageFull,
)
from dicom_wm.ingest.receive import Received, ReceiveOutcome, StoreRequest, receive_instance
from dicom_wm.ingest.task import Outcome, TaskResult, WorkerContext, process_instance
from dicom_wm.ingest.uids import check_uid, is_valid_uid

__all__ = [
    "Backend",
    "CallingAENotAllowed",
    "CannotUnderstand",
    "DatabaseUnavailable",
    "DatasetMismatch",
    "Dispatcher",
    "IngestError",
    "InvalidUID",
    "Outcome",
    "ReceiveOutcome",
    "Received",
    "StorageFull",
    "StoreRequest",
    "TaskResult",
    "WorkerContext",
    "check_uid",
    "is_valid_uid",
    "pending_instance_ids",
    "process_instance",
    "receive_instance",
]
