"""Settings: one typed object built at each entrypoint from ``PASSERELLE_*`` variables."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BASE_MAPPINGS_DIR", "REPO_ROOT", "RetryPolicy", "Settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout the package was installed from (editable installs); default for adapters."""


def _base_mappings_dir() -> Path:
    try:
        base = importlib.resources.files("passerelle_mappings")
    except ModuleNotFoundError:  # a checkout run without installing it (PYTHONPATH=.)
        return REPO_ROOT / "mappings"
    return Path(str(base))


BASE_MAPPINGS_DIR = _base_mappings_dir()
"""The base mapping set shipped in the package (``passerelle_mappings``): the repository's
``mappings/`` itself in an editable install (``make``), a copy in site-packages otherwise."""


class RetryPolicy(BaseModel):
    """How a delivery is retried: exponential backoff with jitter, capped.

    Usage::

        RetryPolicy(initial_delay_s=0.5, max_delay_s=30, max_attempts=None)
    """

    model_config = {"extra": "forbid", "frozen": True}

    initial_delay_s: float = Field(0.5, gt=0)
    max_delay_s: float = Field(30.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)
    max_attempts: int | None = Field(None, ge=1)
    """``None`` retries a retryable failure until it passes (a subscriber that is down)."""
    max_age_s: float | None = Field(None, gt=0)
    """Stop retrying a message this long after its first failed attempt (``None``: no limit)."""
    on_exhausted: Literal["hold", "skip"] = "hold"
    """When a message is dead-lettered (refused for good, or retries exhausted): ``hold`` parks
    that patient's later messages for this subscriber until the dead letter is replayed or
    discarded, so one patient's events never arrive out of order; ``skip`` delivers them."""


class Settings(BaseSettings):
    """Everything a Passerelle process needs to know, with named defaults.

    Built once per entrypoint (``broker/cli/``) and passed down. Tests build ``Settings(...)`` directly.
    """

    model_config = SettingsConfigDict(env_prefix="PASSERELLE_", extra="forbid", frozen=True)

    data_dir: Path = Path("var")
    adapters_dir: Path = REPO_ROOT / "adapters"
    mappings_dir: Path | None = None
    """A site's mappings directory, laid over the base set (``mapping_roots``); ``None``: the
    base set alone."""
    redis_url: str | None = None
    """Use this Redis instead of starting the embedded one (``redis://host:6379/0``)."""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    api_token: SecretStr | None = None
    """The bootstrap admin token for the API and the console; when unset, ``serve`` generates one
    into ``data_dir/api-token``. People and systems get their own (``passerelle tokens``)."""
    api_tls_cert: Path | None = None
    """The API's and console's certificate chain (PEM, leaf first), outside the repository: with
    ``api_tls_key`` the API serves HTTPS only (``broker.api.https``)."""
    api_tls_key: Path | None = None
    """The private key of ``api_tls_cert`` (PEM, unencrypted, readable by the service only)."""
    audit_key: SecretStr | None = None
    """The audit chain's HMAC key (``broker.audit.key``); else ``audit_key_file``."""
    audit_key_file: Path | None = None
    """A file holding the audit key; when neither is set, ``serve`` (and the store's writer)
    generate ``data_dir/audit-key``, readable by its owner only."""
    data_encryption: Literal["on", "off"] = "on"
    """Seal stored message bodies with AES-GCM (``broker.sealing``); ``off`` only for development."""
    data_key: SecretStr | None = None
    """The data keys, ``ID:BASE64`` separated by commas, the current (sealing) key first."""
    data_key_file: Path | None = None
    """A file of data keys, one ``ID BASE64`` a line, the current key first (``broker.datakeys``);
    when neither is set, ``serve`` generates ``data_dir/data-key``. Keep it outside the data
    directory in production."""

    partitions: int = Field(8, ge=1, le=256)
    """Patient partitions per stream: the unit of ordering and of parallel delivery."""
    workers: int = Field(4, ge=1)
    """Celery worker processes started by ``serve``."""
    batch_size: int = Field(200, ge=1)
    """Stream entries one task drains per read."""
    drain_budget_s: float = Field(2.0, gt=0)
    """How long one drain task runs before handing over (keeps the pool fair)."""
    standby_s: float = Field(2.0, ge=0)
    """How long a worker that finished a journal drain waits for the next message before it
    returns to Celery (``broker.standby``: at light load a message then costs no Celery
    task); 0 turns standby off. Up to half the workers (at least one) wait at once."""
    rekick_interval_s: float = Field(5.0, gt=0)
    """Period of the task that re-kicks streams with lag or with pending entries of dead consumers."""
    claim_idle_s: float = Field(20.0, gt=0)
    """A drainer lock lives this long without renewal: a killed worker's stream is taken over by
    the next re-kick within ``claim_idle_s + rekick_interval_s`` (25 s by default). It must exceed
    the longest single send (``delivery_timeout_s``, ``ack_timeout_s``)."""
    dedupe_window_s: int = Field(86_400, ge=0)
    """Same adapter and same MSH-3, MSH-4 and MSH-10 (FHIR: same content) within this window:
    resend the stored ACK, do not re-process."""
    retention_s: int = Field(7 * 86_400, ge=60)
    """How long envelopes and stream entries are kept in Redis."""
    appendfsync: Literal["always", "everysec"] = "everysec"
    """Embedded Redis AOF fsync policy; ``always`` makes each ACK survive a power cut."""
    max_message_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """A larger message is read to its end and answered AR (the connection closes past twice it)."""
    mllp_max_connections: int = Field(200, ge=1)
    """Connections one MLLP listener holds open at once; one more is closed at once (logged)."""
    mllp_idle_timeout_s: float = Field(900.0, gt=0)
    """An MLLP connection that starts no message for this long is closed (the sender
    reconnects when it next sends)."""
    mllp_read_timeout_s: float = Field(60.0, gt=0)
    """A message whose start character came but whose end did not within this long closes
    its connection: a stalled sender holds no connection open half-read."""
    parse_processes: int = Field(2, ge=1)
    """Processes that read messages over 256 KiB off the event loop that answers ACKs
    (``broker.intake.offload``); they start with the first such message."""
    http_limit_concurrency: int = Field(200, ge=1)
    """Connections and requests the API serves at once; more are answered 503 (uvicorn)."""
    http_keep_alive_s: int = Field(5, ge=1)
    """An idle HTTP keep-alive connection is closed after this long (uvicorn)."""
    fhir_max_entries: int = Field(1000, ge=1)
    """A FHIR Bundle with more entries than this is refused (413) before it is validated."""
    rejected_head_bytes: int = Field(64 * 1024, ge=1024)
    """Of an over-size message, ``pl:rejected`` keeps this many first bytes, with the whole
    payload's size and SHA-256 (not the whole payload, kept forever)."""
    redis_maxmemory: str = "2gb"
    """Memory limit of the embedded Redis; with ``noeviction`` a full journal refuses (AR)."""
    max_backlog: int = Field(100_000, ge=1)
    """A subscriber with more messages waiting than this makes the listeners answer AR
    ("retry later") until it catches up: senders keep what the broker could not safely take."""
    max_memory_ratio: float = Field(0.9, gt=0, le=1)
    """Past this share of Redis's maxmemory, the listeners answer AR ("retry later")."""
    retry: RetryPolicy = RetryPolicy()
    delivery_timeout_s: float = Field(10.0, gt=0)
    timings: bool = False
    """Record per-hop timestamps of every message in ``pl:timings`` (``broker.timing``): the
    steady-load benchmark turns it on; off, it costs nothing."""
    store_url: str | None = None
    """The message store's database (SQLAlchemy URL): ``postgresql+psycopg://user@host/db`` in
    production; ``None``: SQLite in ``data_dir/store.sqlite3`` (WAL)."""
    store_batch_size: int = Field(500, ge=1)
    """Records the store writer reads and commits in one transaction."""
    store_linger_s: float = Field(0.5, ge=0)
    """After a batch shorter than ``store_batch_size``, the writer lets records gather this long
    before it reads again: at light load a transaction then carries many messages, not one
    (the store is that much later; the ACK path never waits for it)."""
    store_retention_messages_s: int = Field(90 * 86_400, ge=60)
    """How long the store keeps a message (raw, canonical, identifiers, per-subscriber states)."""
    store_retention_attempts_s: int = Field(90 * 86_400, ge=60)
    """How long the store keeps delivery attempts, by when they were made."""
    store_retention_actions_s: int = Field(365 * 86_400, ge=60)
    """How long the store keeps operator actions (replay, discard…), by when they were taken."""
    store_retention_by_state_s: dict[str, int] = Field(
        default_factory=lambda: {"rejected": 30 * 86_400, "failed": 90 * 86_400}
    )
    """Per message state, how long the store keeps such a message instead of
    ``store_retention_messages_s`` (JSON: ``{"rejected": 2592000}``)."""
    retention_audit_s: int = Field(10 * 365 * 86_400, ge=86_400)
    """How long the audit trail is kept (ten years by default; law 09-08, the CNDP filing and
    the hospital's policy decide): older entries are pruned, vouched for by an ``audit.pruned``
    entry (``broker.store.pruning``)."""
    retention_dead_letters_s: int = Field(90 * 86_400, ge=60)
    """A dead letter resolved (delivered or discarded) this long ago leaves Redis with its
    history entry; an open one is kept until an operator resolves it."""
    retention_rejected_s: int = Field(30 * 86_400, ge=60)
    """How long ``pl:rejected`` keeps input refused at the edge (once the store has it)."""
    retention_quarantine_s: int = Field(30 * 86_400, ge=60)
    """How long ``pl:quarantine`` keeps the entries of messages that failed the pipeline (the
    message itself is in the store, under the ``failed`` state's retention)."""
    alerts_file: Path | None = None
    """Passerelle's own alert rules (``broker.ops.alerts``), YAML; ``None``: the default rules."""
    alert_webhook_url: str | None = None
    """POST each incident's opening and recovery here as JSON; ``None``: no webhook."""
    alert_webhook_timeout_s: float = Field(5.0, gt=0)
    smtp_host: str | None = None
    """Mail each incident's opening and recovery through this SMTP server; ``None``: no mail."""
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_from: str = "passerelle@localhost"
    smtp_to: str = ""
    """Recipients of the alert mails, comma-separated."""
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS before logging in."""
    smtp_timeout_s: float = Field(10.0, gt=0)
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.api_tls_cert is None) != (self.api_tls_key is None):
            msg = "PASSERELLE_API_TLS_CERT and PASSERELLE_API_TLS_KEY go together: set both or neither"
            raise ValueError(msg)
        return self

    @property
    def api_scheme(self) -> str:
        """``https`` when the API serves TLS (``api_tls_cert``), else ``http``."""
        return "http" if self.api_tls_cert is None else "https"

    @property
    def mapping_roots(self) -> tuple[Path, ...]:
        """The layers mappings are loaded from: ``BASE_MAPPINGS_DIR``, then ``mappings_dir``.

        A file at the same path relative to both (``tables/x.csv``) is read from
        ``mappings_dir``; every other file of both is loaded (``broker.mapping.layers``).
        """
        if self.mappings_dir is None:
            return (BASE_MAPPINGS_DIR,)
        return (BASE_MAPPINGS_DIR, self.mappings_dir)

    @property
    def effective_store_url(self) -> str:
        """The message store's database: the configured one or SQLite in the data directory."""
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.data_dir.resolve() / 'store.sqlite3'}"

    @property
    def redis_socket(self) -> Path:
        """Unix socket of the embedded Redis."""
        return self.data_dir.resolve() / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        """The Redis every process connects to: the configured one or the embedded one."""
        if self.redis_url:
            return self.redis_url
        return f"unix://{self.redis_socket}"
