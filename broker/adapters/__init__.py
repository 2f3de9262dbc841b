"""The transport edge: registrations, MLLP framing and TLS; bytes in, bytes out, no mapping."""

from broker.adapters.mllp import AsyncMllpClient, MllpClient, MllpError, MllpServer, frame
from broker.adapters.spec import AdapterSpec, Sender, Subscription, load_adapters
from broker.adapters.tls import TlsSpec

__all__ = [
    # registrations
    "AdapterSpec",
    # MLLP
    "AsyncMllpClient",
    "MllpClient",
    "MllpError",
    "MllpServer",
    "Sender",
    "Subscription",
    # MLLP over TLS
    "TlsSpec",
    "frame",
    "load_adapters",
]
