"""Re-encryption of the store: every sealed body moved to the current data key, in batches.

After ``passerelle keys rotate`` the store still holds bodies sealed with the old key (the ring
opens them). This pass reads the ``messages`` rows in id order, a batch per transaction, and
seals again every ``raw``, ``envelope``, ``canonical`` and ``edit`` that is not sealed with the
current key, including those written in clear before encryption was turned on. It is
resumable: it returns the last id it finished, and a pass started again ``after`` it goes on
from there (a pass from the start only rewrites what is still on an old key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from broker import sealing
from broker.errors import DataKeyError
from broker.store.schema import messages

__all__ = ["Progress", "reencrypt_store"]


@dataclass
class Progress:
    """How far a re-encryption pass went."""

    rows: int = 0
    """Rows read."""
    resealed: int = 0
    """Rows with at least one body sealed again."""
    last_id: str = ""
    """The last row finished: start again ``after`` it."""


def reencrypt_store(
    engine: sa.Engine,
    *,
    after: str = "",
    batch: int = 500,
    on_batch: Callable[[Progress], None] | None = None,
) -> Progress:
    """Seal again, with the current key, every body of the store that is not sealed with it.

    Args:
        engine: the store.
        after: resume after this message id ("" from the start).
        batch: rows per transaction.
        on_batch: told the progress after each committed batch (the CLI prints where to resume).

    Raises:
        DataKeyError: encryption is off, or a body is sealed with a key the ring lacks.
        SealedDataError: a body fails authentication (named by its row and field).
    """
    ring = sealing.active()
    if ring is None:
        msg = "encryption is off (PASSERELLE_DATA_ENCRYPTION=off): there is no key to re-encrypt to"
        raise DataKeyError(msg)
    current = ring.current
    progress = Progress(last_id=after)
    while True:
        with engine.begin() as connection:
            rows = connection.execute(
                sa.select(
                    messages.c.id,
                    messages.c.raw,
                    messages.c.canonical,
                    messages.c.envelope,
                    messages.c.edit,
                )
                .where(messages.c.id > progress.last_id)
                .order_by(messages.c.id)
                .limit(batch)
            ).all()
            for row in rows:
                values: dict[str, bytes | str] = {}
                if row.raw is not None and sealing.key_id_of(row.raw) != current:
                    body = sealing.open(row.raw, row.id, "raw")
                    values["raw"] = ring.seal(body, row.id, "raw")
                if row.canonical and sealing.key_id_of(row.canonical) != current:
                    text = sealing.open_text(row.canonical, row.id, "canonical")
                    values["canonical"] = sealing.seal_text(text, row.id, "canonical")
                if row.edit and sealing.key_id_of(row.edit) != current:
                    text = sealing.open_text(row.edit, row.id, "edit")
                    values["edit"] = sealing.seal_text(text, row.id, "edit")
                if row.envelope is not None and sealing.key_id_of(row.envelope) != current:
                    body = sealing.open(row.envelope, row.id, "env")
                    values["envelope"] = ring.seal(body, row.id, "env")
                if values:
                    connection.execute(
                        messages.update().where(messages.c.id == row.id).values(**values)
                    )
                    progress.resealed += 1
        if not rows:
            return progress
        progress.rows += len(rows)
        progress.last_id = rows[-1].id
        if on_batch is not None:
            on_batch(progress)
        if len(rows) < batch:
            return progress
