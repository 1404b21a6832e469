"""Push spooled statistics to the receiver over mutual TLS.

The lock's identity is its client certificate; nothing in the body names the lock. Each batch is
POSTed as JSON to ``/v1/unknown-keys``, ``/v1/last-seen`` or ``/v1/status``. A 200 whose
``batch_id`` matches acknowledges it. A ``duplicate: true`` response is an acknowledgement too,
because an earlier attempt was stored and only its response was lost. Any other outcome leaves the batch in
the spool's outbox to be sent again unchanged, except a 400, 413 or 415 that says the batch
itself is invalid: retrying that would block the queue forever, so it is dropped, counted and logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

import requests

from lockclient.bundle import parse_time
from lockclient.spool import Batch, Spool

log = logging.getLogger(__name__)

ENDPOINTS = {
    "unknown-keys": "/v1/unknown-keys",
    "last-seen": "/v1/last-seen",
    "status": "/v1/status",
}

# A status batch older than this is followed by a fresh one in the same push.
STALE_STATUS_SECONDS = 5

# Client errors that are about the moment, not about the batch, so they are retried later.
# 422 is among them because the receiver uses it for a lock clock ahead of its own. An operator
# can fix that clock, and the unchanged batch is then accepted.
_RETRYABLE_4XX = {401, 403, 404, 408, 422, 425, 429}


class PushError(Exception):
    """The receiver could not be reached or did not acknowledge; the batch stays spooled."""


@dataclass
class PushReport:
    sent: dict[str, int] = field(default_factory=dict)  # items acknowledged per kind
    rejected: dict[str, int] = field(default_factory=dict)  # items dropped after a final 4xx


class Pusher:
    def __init__(self, session: requests.Session, receiver_url: str, spool: Spool,
                 timeout: tuple[float, float] = (5.0, 20.0)):
        self.session = session
        self.base_url = receiver_url.rstrip("/")
        self.spool = spool
        self.timeout = timeout

    def push_all(self, now: Callable[[], float], status: Callable[[], dict]) -> PushReport:
        """Drain the spool: all due unknown-key and last-seen batches, then one fresh status.

        Raises :class:`PushError` at the first batch that cannot be delivered.
        """
        report = PushReport()
        for kind in ("unknown-keys", "last-seen"):
            while (batch := self.spool.next_batch(kind, now())) is not None:
                self._deliver(batch, report)

        # A status batch left over from an outage is sent first, then a fresh one.
        batch = self.spool.next_batch("status", now(), status)
        self._deliver(batch, report)
        if now() - _sent_at(batch) > STALE_STATUS_SECONDS:
            self._deliver(self.spool.next_batch("status", now(), status), report)
        return report

    def _deliver(self, batch: Batch, report: PushReport) -> None:
        url = self.base_url + ENDPOINTS[batch.kind]
        try:
            response = self.session.post(
                url, data=batch.body, headers={"Content-Type": "application/json"},
                timeout=self.timeout, verify=self.session.verify, allow_redirects=False,
            )
        except requests.exceptions.RequestException as error:
            raise PushError(f"cannot reach receiver {url}: {error}") from None

        if response.status_code == 200:
            self._check_acknowledgement(batch, response)
            self.spool.acknowledge(batch)
            report.sent[batch.kind] = report.sent.get(batch.kind, 0) + batch.items
            log.info("pushed %s batch %s (%d items)", batch.kind, batch.batch_id, batch.items)
            return

        message = _error_message(response)
        if 400 <= response.status_code < 500 and response.status_code not in _RETRYABLE_4XX:
            log.error(
                "receiver rejected %s batch %s (%d items) with %d: %s; dropping it",
                batch.kind, batch.batch_id, batch.items, response.status_code, message,
            )
            self.spool.acknowledge(batch)
            self.spool.count_dropped_batch(batch.items)
            report.rejected[batch.kind] = report.rejected.get(batch.kind, 0) + batch.items
            return
        raise PushError(f"receiver responded {response.status_code} for {batch.kind} batch {batch.batch_id}: {message}")

    def _check_acknowledgement(self, batch: Batch, response: requests.Response) -> None:
        try:
            answer = response.json()
        except ValueError:
            raise PushError(f"receiver responded 200 without JSON for batch {batch.batch_id}") from None
        if not isinstance(answer, dict) or answer.get("batch_id") != batch.batch_id:
            raise PushError(f"receiver acknowledged {answer!r}, expected batch {batch.batch_id}")


def _sent_at(batch: Batch) -> float:
    return parse_time(json.loads(batch.body)["sent_at"], "sent_at")


def _error_message(response: requests.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(answer, dict) and "error" in answer:
        return str(answer["error"])
    return str(answer)[:200]
