"""Enhanced acknowledgment mode: send application ACKs back to the sender's return address.

The pipeline drain queues one application ACK per processed message whose MSH-16 asks for it
(``pl:acks:SOURCE``); ``drain_app_acks`` sends them, in order, to the source adapter's
``reply_to``. A plain function over Redis: the Celery task (``broker.worker.tasks``) and
``broker.testing.EagerBroker`` call it with the source, a connection and a kicker.
"""

from __future__ import annotations

import redis
from structlog.contextvars import clear_contextvars

from broker import keys
from broker.adapters.mllp import MllpClient, MllpError
from broker.adapters.spec import AdapterSpec
from broker.delivery.retry import next_delay
from broker.dispatch import DRAIN_APP_ACKS, Kicker
from broker.log import get_logger
from broker.settings import Settings
from broker.streams import drainer_lock, has_work, read_batch

__all__ = ["drain_app_acks", "return_address"]

log = get_logger(__name__)


def return_address(source: AdapterSpec) -> MllpClient | None:
    """An MLLP client for the source's ``reply_to`` (not connected yet), or None without one.

    When the adapter's listener speaks TLS, so does its return connection: the sender's listener
    is verified against the adapter's ``tls.ca`` (the system's CAs without one) and the
    ``reply_to`` host, and Passerelle presents the adapter's ``tls.cert`` when asked for one.
    Application ACKs name the patient's message (MSA-2) and may quote it (ERR): they are
    patient data, never sent in clear where the messages came encrypted.
    """
    if source.reply_to is None:
        return None
    host, _, port = source.reply_to.rpartition(":")
    tls = source.tls.client_context() if source.tls is not None else None
    return MllpClient(host.strip("[]"), int(port), timeout=source.ack_timeout_s, tls=tls)


def drain_app_acks(
    client: redis.Redis,
    source: AdapterSpec,
    *,
    connection: MllpClient,
    kicker: Kicker,
    settings: Settings,
) -> int:
    """Send the queued application ACKs of one enhanced-mode inbound adapter, in order.

    An ACK is not itself acknowledged (its MSH-15/16 ask for nothing), so a written frame is
    done; a refused or broken connection is retried after the adapter's backoff.

    Args:
        client: the broker's Redis.
        source: the inbound adapter's registration (its retry policy).
        connection: the MLLP client of its return address (see :func:`return_address`).
        kicker: queues the next drain (more work, or a retry after the back-off).
        settings: ``batch_size`` and ``claim_idle_s`` (the drainer lock).

    Returns:
        How many ACKs were sent.
    """
    clear_contextvars()
    stream = keys.app_acks(source.id)
    client.delete(keys.kick(stream))
    sent = 0
    with drainer_lock(client, stream, settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        while True:
            entries = read_batch(client, stream, keys.DELIVER_GROUP, settings.batch_size)
            if not entries:
                break
            done: list[str] = []
            try:
                for entry_id, fields in entries:
                    connection.post(fields[b"ack"])
                    done.append(entry_id)
            except MllpError as exc:
                delay = next_delay(source.retry, 1)
                log.warning(
                    "ack.retrying", adapter=source.id, error=str(exc), delay_s=round(delay, 2)
                )
                kicker.later(DRAIN_APP_ACKS, [source.id], delay)
                if done:
                    client.xack(stream, keys.DELIVER_GROUP, *done)
                return sent + len(done)
            client.xack(stream, keys.DELIVER_GROUP, *done)
            sent += len(done)
            lock.renew()
    if has_work(client, stream, keys.DELIVER_GROUP):
        kicker.kick(DRAIN_APP_ACKS, [source.id], force=True)
    return sent
