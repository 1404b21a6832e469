"""Download the bundle and the signers document over mutual TLS, defensively.

- The session ignores the environment (``trust_env = False``): ``REQUESTS_CA_BUNDLE``,
  ``CURL_CA_BUNDLE``, proxies and ``.netrc`` cannot replace the pinned private CA.
- Connect and read timeouts bound each network wait; an overall deadline bounds the body, so
  a server that trickles it one byte at a time is cut off too.
- The body is streamed and abandoned as soon as it passes the size cap.
- Conditional GET with ``If-None-Match``; a ``304`` without an ``ETag`` keeps the old one.
- :class:`Backoff` spaces out retries exponentially with jitter.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
import urllib3.exceptions

from lockclient.config import FetchSettings

log = logging.getLogger(__name__)

USER_AGENT = "doorlock-lockclient/1"
_CHUNK_BYTES = 64 * 1024


class FetchError(Exception):
    """A download failed; ``reason`` is a short machine-friendly cause."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FetchResult:
    """``data`` is None for 304 Not Modified; ``etag`` is the server's (None if it sent none)."""

    data: bytes | None
    etag: str | None

    @property
    def not_modified(self) -> bool:
        return self.data is None


def make_session(ca_file: Path, client_cert: Path, client_key: Path) -> requests.Session:
    """Return a session that trusts only ``ca_file`` and presents the lock's certificate."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_file)
    session.cert = (str(client_cert), str(client_key))
    session.headers["User-Agent"] = USER_AGENT
    return session


class Fetcher:
    """Conditional, bounded GET requests on one session."""

    def __init__(self, session: requests.Session, settings: FetchSettings,
                 monotonic: Callable[[], float] = time.monotonic):
        self.session = session
        self.settings = settings
        self.monotonic = monotonic

    def get(self, url: str, etag: str | None = None) -> FetchResult:
        """GET ``url``; return the body, or a not-modified result; raise :class:`FetchError`."""
        headers = {"If-None-Match": etag} if etag else {}
        deadline = self.monotonic() + self.settings.deadline
        # NOTE: the deadline is checked while the body streams. The TLS handshake and the
        # response headers are bounded only per read by read_timeout, so a peer that trickles
        # them can hold this thread longer; the systemd watchdog on the update loop is the limit.
        try:
            response = self.session.get(
                url, headers=headers, stream=True,
                timeout=(self.settings.connect_timeout, self.settings.read_timeout),
                # Passed explicitly as well, so no per-request default can widen trust.
                verify=self.session.verify, allow_redirects=False,
            )
        except requests.exceptions.SSLError as error:
            raise FetchError("tls", f"TLS handshake with {url} failed: {error}") from None
        except requests.exceptions.Timeout as error:
            raise FetchError("timeout", f"{url} timed out: {error}") from None
        except requests.exceptions.RequestException as error:
            raise FetchError("connection", f"cannot reach {url}: {error}") from None

        with response:
            if response.status_code == 304:
                return FetchResult(None, response.headers.get("ETag"))
            if response.status_code != 200:
                raise FetchError(
                    f"http-{response.status_code}",
                    f"{url} answered {response.status_code} {response.reason}",
                )
            data = self._read_body(url, response, deadline)
            return FetchResult(data, response.headers.get("ETag"))

    def _read_body(self, url: str, response: requests.Response, deadline: float) -> bytes:
        limit = self.settings.max_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise FetchError("too-large", f"{url} announces {declared} bytes, over the limit of {limit}")

        chunks = []
        received = 0
        try:
            while True:
                # read1 returns whatever has arrived, so the deadline is checked even when the
                # server sends one byte at a time.
                chunk = response.raw.read1(_CHUNK_BYTES)
                if not chunk:
                    break
                received += len(chunk)
                if received > limit:
                    raise FetchError("too-large", f"{url} sent more than the limit of {limit} bytes")
                if self.monotonic() > deadline:
                    raise FetchError(
                        "deadline", f"{url} took longer than {self.settings.deadline:g} s; "
                        f"{received} bytes received",
                    )
                chunks.append(chunk)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            # Read timeouts and resets in the middle of the body come from urllib3 or the socket.
            raise FetchError("connection", f"download of {url} failed: {error}") from None
        return b"".join(chunks)


class Backoff:
    """Exponential backoff with jitter: the n-th consecutive failure waits up to
    ``initial * 2**n`` seconds (capped at ``maximum``), scaled by a random factor in [0.5, 1)."""

    def __init__(self, initial: float, maximum: float, random_fraction: Callable[[], float] = random.random):
        self.initial = initial
        self.maximum = maximum
        self.random_fraction = random_fraction
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.failures, 32)))
        self.failures += 1
        return ceiling * (0.5 + self.random_fraction() / 2)

    def reset(self) -> None:
        self.failures = 0
