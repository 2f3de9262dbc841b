"""Where an alert incident is told: a webhook (JSON POST) and e-mail (SMTP), each optional.

A notification that cannot be sent is logged (``alert.notify_failed``, with the channel and the
exception class) and never raised: beat's housekeeping must go on, and the incident stays
recorded in Redis (``pl:incidents``), visible in the logs and ``/metrics`` meanwhile.

Notices carry the rule, its subject (a subscriber's or an adapter's id) and a summary of
figures, never patient data.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Literal, Protocol

from broker.log import get_logger
from broker.settings import Settings

__all__ = ["Email", "Notice", "Notifier", "Webhook", "notifiers", "send_all"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Notice:
    """One incident opening (``firing``) or recovering (``resolved``)."""

    status: Literal["firing", "resolved"]
    rule: str
    subject: str
    summary: str
    opened_at: float
    resolved_at: float | None = None

    @property
    def title(self) -> str:
        """One line: ``[Passerelle] FIRING subscriber_failing dmp-national``."""
        return f"[Passerelle] {self.status.upper()} {self.rule} {self.subject}"

    def to_json(self) -> bytes:
        """The webhook body."""
        return json.dumps({"source": "passerelle", **asdict(self)}).encode()


class Notifier(Protocol):
    """A channel: ``send`` raises when the notice could not be handed over."""

    @property
    def name(self) -> str: ...

    def send(self, notice: Notice) -> None: ...


@dataclass(frozen=True)
class Webhook:
    """POST the notice as JSON to ``url``; a non-2xx answer or no answer in ``timeout_s`` fails."""

    url: str
    timeout_s: float = 5.0
    name: str = "webhook"

    def send(self, notice: Notice) -> None:
        request = urllib.request.Request(
            self.url,
            data=notice.to_json(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s):
            pass  # urlopen raises HTTPError for a 4xx/5xx answer


@dataclass(frozen=True)
class Email:
    """Mail the notice through an SMTP server, with STARTTLS and login when configured."""

    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 10.0
    name: str = "email"

    def send(self, notice: Notice) -> None:
        message = EmailMessage()
        message["Subject"] = notice.title
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        lines = [notice.summary, "", f"rule: {notice.rule}", f"subject: {notice.subject}"]
        message.set_content("\n".join(lines) + "\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)


def notifiers(settings: Settings) -> list[Notifier]:
    """The channels the settings configure (none by default)."""
    found: list[Notifier] = []
    if settings.alert_webhook_url:
        found.append(Webhook(settings.alert_webhook_url, settings.alert_webhook_timeout_s))
    recipients = tuple(a.strip() for a in settings.smtp_to.split(",") if a.strip())
    if settings.smtp_host and recipients:
        password = settings.smtp_password
        found.append(
            Email(
                settings.smtp_host,
                settings.smtp_port,
                settings.smtp_from,
                recipients,
                user=settings.smtp_user,
                password=password.get_secret_value() if password else None,
                starttls=settings.smtp_starttls,
                timeout_s=settings.smtp_timeout_s,
            )
        )
    return found


def send_all(channels: list[Notifier], notice: Notice) -> None:
    """Hand ``notice`` to every channel; a failure is logged, never raised."""
    for channel in channels:
        try:
            channel.send(notice)
        except Exception as exc:  # a peer's failure must not stop housekeeping
            log.warning(
                "alert.notify_failed",
                channel=channel.name,
                rule=notice.rule,
                subject=notice.subject,
                status=notice.status,
                error=type(exc).__name__,
            )
        else:
            log.info(
                "alert.notified",
                channel=channel.name,
                rule=notice.rule,
                subject=notice.subject,
                status=notice.status,
            )
