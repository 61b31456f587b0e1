"""dicom-wm's DICOM Application Entity: association policy and thin handlers."""

from scp.ae import build_ae, start_server
from scp.context import ScpContext
from scp.handlers import HANDLERS, handle_echo, handle_store
from scp.status import STATUS_TABLE, status_for

__all__ = ["ScpContext", "build_ae", "start_server", "HANDLERS", "handle_echo", "handle_store", "STATUS_TABLE", "status_for"]
