"""An in-process mail sender for tests: records every mail, can hold sends, can fail the first ones."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from alerts.delivery import SendResult
from alerts.errors import DeliveryError


class RecordingSender:
    """Keeps every mail it is handed; each send first waits for ``gate`` (open unless ``blocked``).

    The first ``failures`` sends are answered 451 after they are recorded; ``started`` is set
    when a send begins.
    """

    def __init__(self, failures: int = 0, *, blocked: bool = False) -> None:
        self.messages: list[EmailMessage] = []
        self.failures = failures
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()
        self.started = asyncio.Event()

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        self.started.set()
        await self.gate.wait()
        self.messages.append(message)
        if self.failures:
            self.failures -= 1
            raise DeliveryError("451 4.3.0 try later")
        return SendResult(accepted=recipients)

    def describe(self) -> str:
        return "recording sender"

    def mails(self) -> list[tuple[str, str]]:
        """(subject, stories) of each mail, in order."""
        return [(str(m["Subject"]), str(m["X-HN-Alerts-Story"])) for m in self.messages]
