"""Enhanced acknowledgment mode: send application ACKs back to the sender's return address."""

from __future__ import annotations

from structlog.contextvars import clear_contextvars

from broker import keys
from broker.adapters.mllp import MllpClient, MllpError
from broker.delivery.retry import next_delay
from broker.dispatch import DRAIN_APP_ACKS, publish
from broker.log import get_logger
from broker.streams import drainer_lock, has_work, read_batch
from broker.worker.runtime import runtime

__all__ = ["drain_app_acks"]

log = get_logger(__name__)
_clients: dict[str, MllpClient] = {}


def drain_app_acks(source: str) -> int:
    """Send the queued application ACKs of one enhanced-mode inbound adapter, in order.

    An ACK is not itself acknowledged (its MSH-15/16 ask for nothing), so a written frame is
    done; a refused or broken connection is retried after the adapter's backoff.
    """
    rt = runtime()
    clear_contextvars()
    stream = keys.app_acks(source)
    rt.client.delete(keys.kick(stream))
    adapter = rt.adapters.get(source)
    if adapter is None or adapter.reply_to is None:
        log.error("ack.no_return_address", adapter=source)
        return 0
    sent = 0
    with drainer_lock(rt.client, stream, rt.settings.claim_idle_s) as lock:
        if lock is None:
            return 0
        client = _clients.get(source)
        if client is None:
            host, _, port = adapter.reply_to.rpartition(":")
            client = _clients[source] = MllpClient(
                host.strip("[]"), int(port), timeout=adapter.ack_timeout_s
            )
        while True:
            entries = read_batch(rt.client, stream, keys.DELIVER_GROUP, rt.settings.batch_size)
            if not entries:
                break
            done: list[str] = []
            try:
                for entry_id, fields in entries:
                    client.post(fields[b"ack"])
                    done.append(entry_id)
            except MllpError as exc:
                delay = next_delay(adapter.retry, 1)
                log.warning("ack.retrying", adapter=source, error=str(exc), delay_s=round(delay, 2))
                publish(rt.celery, DRAIN_APP_ACKS, [source], delay)
                if done:
                    rt.client.xack(stream, keys.DELIVER_GROUP, *done)
                return sent + len(done)
            rt.client.xack(stream, keys.DELIVER_GROUP, *done)
            sent += len(done)
            lock.renew()
    if has_work(rt.client, stream, keys.DELIVER_GROUP):
        rt.kicker.kick(DRAIN_APP_ACKS, [source], force=True)
    return sent
