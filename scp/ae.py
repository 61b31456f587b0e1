"""The dicom-wm Application Entity.

Verification SCP, and the Storage SCP for every storage SOP class - standard,
private or unknown - in whatever transfer syntax the peer proposes first
(pynetdicom's unrestricted storage service): a PACS stores what it is sent.
Instances the engine cannot watermark end FAILED with the reason, stored as
received; nothing is refused for its transfer syntax.

Handlers come from :data:`scp.handlers.HANDLERS`; adding a service means
adding its SOP classes to :func:`build_ae` and its handler to that table.
"""

from __future__ import annotations

import logging

from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_wm.query.model import SOP_CLASSES
from scp.context import ScpContext
from scp.handlers import HANDLERS

__all__ = ["build_ae", "start_server", "TRANSFER_SYNTAXES"]

log = logging.getLogger(__name__)

# Offered for the non-storage services (Verification, Q/R).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
]

MAX_ASSOCIATIONS = 32


def build_ae(ctx: ScpContext) -> AE:
    """An AE configured from ``ctx.settings`` (not yet listening)."""
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    settings = ctx.settings
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for qr_sop_class in SOP_CLASSES.values():  # C-FIND / C-MOVE / C-GET, Patient and Study Root
        ae.add_supported_context(qr_sop_class, TRANSFER_SYNTAXES)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    return ae


def start_server(ctx: ScpContext) -> ThreadedAssociationServer:
    """Listen on ``settings.host:settings.port`` in background threads."""
    ae = build_ae(ctx)
    handlers = [(event, handler, [ctx]) for event, handler in HANDLERS]
    server = ae.start_server((ctx.settings.host, ctx.settings.port), block=False, evt_handlers=handlers)
    log.info(
        "AE %s listening on %s:%d (calling AEs allowed: %s)",
        ctx.settings.ae_title,
        ctx.settings.host,
        server.server_address[1],
        ", ".join(sorted(ctx.allowed_calling_aes)) or "any",
    )
    return server
