"""The transport edge: registrations and MLLP framing; bytes in, bytes out, no mapping."""

from broker.adapters.mllp import AsyncMllpClient, MllpClient, MllpError, MllpServer, frame
from broker.adapters.spec import AdapterSpec, Sender, Subscription, load_adapters

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
    "frame",
    "load_adapters",
]
