"""Push spooled statistics to the receiver over mutual TLS.

The lock's identity is its client certificate; nothing in the body names the lock. Each batch is
POSTed as JSON to ``/v1/unknown-keys``, ``/v1/last-seen`` or ``/v1/status``. A 200 whose
``batch_id`` matches acknowledges it. A ``duplicate: true`` response is an acknowledgement too,
because an earlier attempt was stored and only its response was lost.

What the receiver's other answers mean for the batch (see ``receiver/app.py``):

- no answer, 5xx, and 401, 403, 404, 408, 425 or 429: about the moment or the deployment (a
  receiver restarting, a certificate not yet in the manifest, a wrong ``receiver_url``), not
  about the batch. It stays in the outbox and is sent again, unchanged, after a backoff.
- 422 on ``sent_at``: the lock's clock is ahead of the receiver's. The batch stays. Once the
  lock's clock is back behind the ``sent_at`` stored in the batch, that ``sent_at`` is replaced
  by the current time before sending (the receiver leaves ``sent_at`` out of its idempotency
  check), so fixing the clock is enough to get it through.
- 413 (from the receiver or a proxy in front of it), or 422 on the number of items or events:
  the batch is too large for the receiver's limits. Its items go back into the spool and are
  sent again in batches half the size (the smaller size holds until the daemon restarts). A
  single item that is still too large is handled like the next case.
- any other 4xx (400, 409, 411, 415, every other 422) that carries the receiver's own JSON
  error naming a field: the batch itself can never be accepted (a window finer than the lock's
  precision, timestamps recorded while the clock ran ahead). Retrying it would block its kind
  forever, so it is moved to the spool's quarantine, its items are counted as lost
  (``spool_dropped`` in the status record), a ``statistics-rejected`` event goes out with the
  next status, and a WARNING names the batch id. A 4xx without that JSON error comes from
  something in between (nginx answers 400 with an HTML page when it refuses the lock's
  certificate) and is retried like a 403.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import requests

from lockclient.bundle import parse_time
from lockclient.reader import short_hwid
from lockclient.spool import Batch, Spool

log = logging.getLogger(__name__)

ENDPOINTS = {
    "unknown-keys": "/v1/unknown-keys",
    "last-seen": "/v1/last-seen",
    "status": "/v1/status",
}

# A status batch older than this is followed by a fresh one in the same push.
STALE_STATUS_SECONDS = 5

# Client errors that are about the moment or the deployment, not about the batch.
_RETRYABLE_4XX = {401, 403, 404, 408, 425, 429}

# The receiver's field name for "sent_at is ahead of my clock"; that 422 is retried too.
_CLOCK_AHEAD_FIELD = "sent_at"

# Fields the receiver blames in a 422 for too many items or events in one batch.
_TOO_MANY_FIELDS = {"items", "status.events"}


class PushError(Exception):
    """The receiver could not be reached or did not acknowledge; the batch stays spooled."""


@dataclass
class PushReport:
    sent: dict[str, int] = field(default_factory=dict)  # items acknowledged per kind
    rejected: dict[str, int] = field(default_factory=dict)  # items quarantined after a final 4xx
    split: dict[str, int] = field(default_factory=dict)  # items put back to go in smaller batches


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
                self._deliver(batch, report, now)

        # A status batch left over from an outage is sent first, then a fresh one. A status
        # batch quarantined or split here leaves its events for the fresh one.
        batch = self.spool.next_batch("status", now(), status)
        created = _sent_at(batch)
        self._deliver(batch, report, now)
        if now() - created > STALE_STATUS_SECONDS or batch.kind in report.rejected or batch.kind in report.split:
            self._deliver(self.spool.next_batch("status", now(), status), report, now)
        return report

    def _deliver(self, batch: Batch, report: PushReport, now: Callable[[], float] | None = None) -> None:
        if now is not None:
            current = now()
            if _sent_at(batch) > current + 1:
                # The clock was ahead when the batch was made and has been put right since.
                batch = self.spool.refresh_sent_at(batch, current)
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

        message, culprit = _error_message(response)
        code = response.status_code
        if code == 422 and culprit == _CLOCK_AHEAD_FIELD:
            raise PushError(f"receiver refused {batch.kind} batch {batch.batch_id} because the lock's clock is "
                            f"ahead of its own ({message}); the batch is kept and sent again")
        # 413 may come from a proxy in front of the receiver as well; it is about the size anyway.
        too_large = code == 413 or (code == 422 and culprit in _TOO_MANY_FIELDS)
        if too_large and batch.items > 1:
            size = self.spool.split(batch)
            report.split[batch.kind] = report.split.get(batch.kind, 0) + batch.items
            log.warning("receiver rejected %s batch %s (%d items) as too large: %s; sending its items again "
                        "in batches of at most %d", batch.kind, batch.batch_id, batch.items, message, size)
            return
        if 400 <= code < 500 and code not in _RETRYABLE_4XX and (culprit is not None or too_large):
            log.warning(
                "receiver rejected %s batch %s (%d items) for good with %d: %s; moved to the spool's "
                "quarantine and counted as lost", batch.kind, batch.batch_id, batch.items, code, message,
            )
            self.spool.quarantine(batch, code, message, now() if now is not None else _sent_at(batch))
            report.rejected[batch.kind] = report.rejected.get(batch.kind, 0) + batch.items
            return
        raise PushError(f"receiver responded {code} for {batch.kind} batch {batch.batch_id}: {message}")

    def _check_acknowledgement(self, batch: Batch, response: requests.Response) -> None:
        try:
            answer = response.json()
        except ValueError:
            raise PushError(f"receiver responded 200 without JSON for batch {batch.batch_id}") from None
        if not isinstance(answer, dict) or answer.get("batch_id") != batch.batch_id:
            raise PushError(f"receiver acknowledged {answer!r}, expected batch {batch.batch_id}")


def _sent_at(batch: Batch) -> float:
    return parse_time(json.loads(batch.body)["sent_at"], "sent_at")


def _error_message(response: requests.Response) -> tuple[str, str | None]:
    """Return the receiver's error text and the field it blames (None when it names none)."""
    try:
        answer = response.json()
    except ValueError:
        return response.text[:200], None
    if isinstance(answer, dict) and "error" in answer:
        culprit = answer.get("field")
        return _short_uids(str(answer["error"])[:500]), culprit if isinstance(culprit, str) else None
    return _short_uids(str(answer)[:200]), None


# A hardware id of four bytes or more, as the receiver may quote one in an error.
_UID = re.compile(r"\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){3,}\b")


def _short_uids(text: str) -> str:
    """Shorten quoted hardware ids, since the message is logged at WARNING and kept in events."""
    return _UID.sub(lambda match: short_hwid(match.group(0)), text)
