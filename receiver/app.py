"""The receiver's WSGI application: authenticate the lock, validate the push, store the batch.

Each request goes through these steps, and the first step that fails sets the status:

1. route (404, 405);
2. identity from the verified client certificate (403 for none, unknown or disabled locks);
3. body size (413) and content type (415);
4. JSON syntax (400), then the JSON Schema of the endpoint (422);
5. checks a schema cannot express (422): valid dates, timestamps not ahead of the receiver's
   clock beyond the tolerance, windows aligned to a precision no finer than the lock's;
6. one transaction that stores the batch, or nothing when its id is already stored (200),
   or 409 when the id was used before for different content.

Every 4xx body is ``{"error": "<field>: <what is wrong>", "field": "<field>"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import fastjsonschema
import jsonschema
from cheroot.errors import MaxSizeExceeded

from receiver.config import ReceiverConfig
from receiver.identity import (
    CertificateError, LockDirectory, PublishedLock, certificate_from_header, certificate_sha256_from_pem,
)
from receiver.store import (
    Batch, BatchConflict, Contact, LockEvent, SeenWindow, StatisticsStore, UnknownKey,
)

log = logging.getLogger(__name__)

# The schemas are installed inside the compiler package by a wheel (compiler/schemas) and sit
# next to the packages in a checkout or an editable install.
_INSTALLED_SCHEMAS = Path(__file__).resolve().parent.parent / "compiler" / "schemas"
SCHEMA_DIR = _INSTALLED_SCHEMAS if _INSTALLED_SCHEMAS.is_dir() else Path(__file__).resolve().parent.parent / "schemas"

# An oversized body up to this multiple of the limit is read and dropped before the 413; the
# server closes the connection on anything larger without reading it.
DISCARD_FACTOR = 4

# Exceptions from reading ``wsgi.input``: a body that is too large, malformed chunking or a
# client that stopped sending.
_BODY_READ_ERRORS = (OSError, ValueError, MaxSizeExceeded)

ROUTES = {
    "/v1/unknown-keys": "receiver-unknown-keys",
    "/v1/last-seen": "receiver-last-seen",
    "/v1/status": "receiver-status",
}


class RequestError(Exception):
    """A request the receiver rejects; ``status`` is the HTTP status, ``field`` the culprit."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field


@dataclass(frozen=True)
class Push:
    """An authenticated, validated request body."""

    lock: PublishedLock
    certificate_sha256: str
    body: dict
    sent_at: int
    received_at: int


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 411: "Length Required",
            413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class EndpointSchema:
    """One endpoint's JSON Schema, compiled twice from the same file.

    ``accept`` (fastjsonschema, compiled to Python code) decides whether a body is valid, about
    twenty times faster than ``explain`` (jsonschema), which runs only on rejected bodies to
    name the field. A test checks that both agree.
    """

    accept: Callable[[object], object]
    explain: jsonschema.protocols.Validator


def load_schemas() -> dict[str, EndpointSchema]:
    schemas = {}
    for path, name in ROUTES.items():
        schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        inlined = _inline_references(schema, schema)
        inlined.pop("$defs", None)
        inlined.pop("$id", None)
        schemas[path] = EndpointSchema(accept=fastjsonschema.compile(inlined), explain=_ExplainingValidator(inlined))
    return schemas


# JSON Schema patterns follow ECMA-262, where "$" matches only at the very end. In Python's re
# it also matches before a final newline, so "04:a2\n" would pass "^...$". fastjsonschema
# rewrites "$" to "\Z"; the explaining validator does the same, so that both agree.
_DOLLAR = re.compile(r"(?<!\\)\$")


def _ecma_pattern(validator, pattern: str, instance: object, schema: dict):
    if isinstance(instance, str) and not re.search(_DOLLAR.sub(r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_ExplainingValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def _inline_references(node: object, root: dict) -> object:
    """Replace each local ``{"$ref": "#/$defs/x"}`` by the definition it names.

    Resolving references takes about half of the validation time per request; the schemas
    have no recursive definitions, so inlining them once gives the same result.
    """
    if isinstance(node, list):
        return [_inline_references(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    reference = node.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        target = root["$defs"][reference.removeprefix("#/$defs/")]
        merged = {**_inline_references(target, root), **{key: value for key, value in node.items() if key != "$ref"}}
        return merged
    return {key: _inline_references(value, root) for key, value in node.items()}


class ReceiverApp:
    """WSGI callable. ``clock`` returns the receiver's time in Unix seconds (tests replace it)."""

    def __init__(self, config: ReceiverConfig, store: StatisticsStore, directory: LockDirectory,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.directory = directory
        self.clock = clock
        self.schemas = load_schemas()
        self._rejections = _RepeatCounter()

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        try:
            status, body = self.handle(environ)
        except Exception:
            log.exception("unexpected error while handling %s %s", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"))
            status, body = 500, {"error": "internal error; the receiver logged the details"}
        payload = json.dumps(body).encode("utf-8")
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ]
        if status == 405:
            headers.append(("Allow", "POST"))
        start_response(f"{status} {_REASONS.get(status, '')}".strip(), headers)
        return [payload]

    def handle(self, environ: dict) -> tuple[int, dict]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path == "/v1/health" and method == "GET":
            return 200, {"status": "ok"}
        if path not in ROUTES:
            return 404, {"error": f"path: {path!r} not found; the endpoints are {', '.join(ROUTES)}",
                         "field": "path"}
        if method != "POST":
            return 405, {"error": f"method: {path} accepts POST only, not {method}", "field": "method"}

        lock = None
        batch_id = None
        try:
            lock, fingerprint = self.identify(environ)
            document = self.read_json(environ)
            batch_id = document.get("batch_id") if isinstance(document, dict) else None
            push = self.validate(path, document, lock, fingerprint)
            result = self.store_push(path, push)
        except RequestError as error:
            self._log_rejection(error, lock, batch_id, path)
            return error.status, {"error": str(error), "field": error.field}
        except BatchConflict as error:
            log.warning("%s", error)
            return 409, {"error": f"batch_id: {error}", "field": "batch_id"}
        return 200, {"batch_id": result.batch_id, "stored": result.stored, "duplicate": result.duplicate}

    # --- 2. identity ----------------------------------------------------------------------

    def identify(self, environ: dict) -> tuple[PublishedLock, str]:
        pem = self._client_certificate(environ)
        if not pem:
            raise RequestError(403, "certificate", "no verified client certificate; a lock must "
                                                   "connect with the certificate the CA issued to it")
        try:
            fingerprint = certificate_sha256_from_pem(pem)
        except CertificateError as error:
            raise RequestError(403, "certificate", str(error)) from None
        lock = self.directory.identify(fingerprint)
        if lock is None:
            raise RequestError(403, "certificate", f"certificate sha256 {fingerprint} does not belong to "
                                                   "an enabled lock in the published manifest")
        return lock, fingerprint

    def _client_certificate(self, environ: dict) -> str | None:
        if self.config.mode == "tls":
            # Set by the TLS layer after it verified the chain against the client CA.
            return environ.get("SSL_CLIENT_CERT")

        header_key = "HTTP_" + self.config.header.upper().replace("-", "_")
        value = environ.get(header_key)
        if value is None:
            return None
        if self.config.unix_socket is None and environ.get("REMOTE_ADDR") not in self.config.trusted_peers:
            raise RequestError(403, self.config.header, f"identity header from untrusted peer "
                                                        f"{environ.get('REMOTE_ADDR')!r} ignored")
        return certificate_from_header(value)

    # --- 3 and 4. body --------------------------------------------------------------------

    def read_json(self, environ: dict) -> object:
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type and content_type.split(";")[0].strip().lower() != "application/json":
            raise RequestError(415, "Content-Type", f"{content_type!r} is not supported; send application/json")

        data = self._read_body(environ)
        try:
            document = json.loads(data, object_pairs_hook=_reject_duplicate_fields, parse_constant=_reject_constant)
        except RecursionError:
            raise RequestError(400, "body", "arrays or objects nested too deeply to parse; the request "
                                            "bodies nest four levels at most") from None
        except UnicodeDecodeError as error:
            raise RequestError(400, "body", f"not UTF-8: {error.reason} at byte {error.start}") from None
        except json.JSONDecodeError as error:
            raise RequestError(400, "body", f"invalid JSON at line {error.lineno} column {error.colno}: "
                                            f"{error.msg}") from None
        except _DuplicateField as error:
            raise RequestError(400, "body", str(error)) from None
        return document

    def _read_body(self, environ: dict) -> bytes:
        limit = self.config.limits.max_body_bytes
        length_text = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        try:
            if length_text:
                try:
                    length = int(length_text)
                except ValueError:
                    length = -1
                if length < 0:
                    raise RequestError(400, "Content-Length", f"{length_text!r} is not a valid length")
                if length > limit:
                    _discard(stream, length)
                    raise RequestError(413, "body", f"{length} bytes is over the limit of {limit} bytes; "
                                                    "send fewer items per batch")
                return stream.read(length)
            if environ.get("wsgi.input_terminated"):
                data = stream.read(limit + 1)
                if len(data) > limit:
                    _discard(stream, DISCARD_FACTOR * limit)
                    raise RequestError(413, "body", f"over the limit of {limit} bytes; send fewer items per batch")
                return data
        except _BODY_READ_ERRORS as error:
            # cheroot raises these for a chunked body over its own limit or with a broken
            # chunk header, and the socket for a client that stopped sending.
            if isinstance(error, MaxSizeExceeded) or "Too Large" in str(error):
                raise RequestError(413, "body", f"over the limit of {limit} bytes; send fewer items "
                                                "per batch") from None
            raise RequestError(400, "body", f"cannot be read: {error}") from None
        raise RequestError(411, "Content-Length", "missing; send the body with a Content-Length")

    # --- 4 and 5. validation --------------------------------------------------------------

    def validate(self, path: str, document: object, lock: PublishedLock, fingerprint: str) -> Push:
        if isinstance(document, dict) and isinstance(document.get("items"), list):
            count, limit = len(document["items"]), self.config.limits.max_items
            if count > limit:
                raise RequestError(422, "items", f"{count} items is over the limit of {limit} per batch; "
                                                 "split the batch")
        if isinstance(document, dict) and isinstance(document.get("status"), dict):
            events = document["status"].get("events")
            limit = self.config.limits.max_items
            if isinstance(events, list) and len(events) > limit:
                raise RequestError(422, "status.events", f"{len(events)} events is over the limit of {limit}")

        self._check_schema(self.schemas[path], document)

        now = int(self.clock())
        sent_at = _timestamp(document["sent_at"], "sent_at")
        push = Push(lock=lock, certificate_sha256=fingerprint, body=document, sent_at=sent_at, received_at=now)
        self._check_clock(push)
        return push

    def _check_schema(self, schema: EndpointSchema, document: object) -> None:
        try:
            schema.accept(document)
        except fastjsonschema.JsonSchemaException as fast_error:
            error = _first_schema_error(schema.explain, document)
            if error is None:
                log.error("schema validators disagree: fastjsonschema rejected a body that jsonschema "
                          "accepts (%s); rejecting it", fast_error)
                error = RequestError(422, "body", str(fast_error))
            raise error from None
        # JSON Schema counts 2.0 as an integer, but the stored counters must be integers.
        for field, value in _integer_fields(document):
            if isinstance(value, float):
                raise RequestError(422, field, f"{value!r} must be written as an integer, without a fraction")

    def _check_clock(self, push: Push) -> None:
        tolerance = self.config.limits.clock_tolerance_seconds
        offset = push.sent_at - push.received_at
        if offset > tolerance:
            # The batch is refused, but the lock's clock offset is worth keeping: it is what
            # an admin needs to see to fix the lock.
            self.store.record_contact(Contact(push.lock.lock, push.certificate_sha256, push.received_at, offset))
            raise RequestError(422, "sent_at", f"{push.body['sent_at']} is {offset} seconds ahead of the "
                                               f"receiver's clock (tolerance {tolerance} s); fix the lock's "
                                               "clock (NTP)")

    def _not_in_future(self, push: Push, value: str, field: str) -> int:
        seconds = _timestamp(value, field)
        limit = push.received_at + self.config.limits.clock_tolerance_seconds
        if seconds > limit:
            raise RequestError(422, field, f"{value} is in the future by more than the tolerance of "
                                           f"{self.config.limits.clock_tolerance_seconds} s")
        return seconds

    # --- 6. storage -----------------------------------------------------------------------

    def store_push(self, path: str, push: Push):
        offset = push.sent_at - push.received_at
        contact = Contact(push.lock.lock, push.certificate_sha256, push.received_at, offset)
        batch = Batch(lock=push.lock.lock, batch_id=push.body["batch_id"],
                      content_sha256=_content_digest(push.body), received_at=push.received_at)
        if abs(offset) > self.config.limits.clock_tolerance_seconds:
            log.warning("lock %s: clock is %+d seconds off the receiver's clock", push.lock.lock, offset)

        if path == "/v1/unknown-keys":
            items = self._unknown_keys(push)
            result = self.store.store_unknown_keys(batch, items, contact)
        elif path == "/v1/last-seen":
            items, not_in_bundle, version = self._last_seen(push)
            result = self.store.store_last_seen(batch, items, not_in_bundle, version, contact)
        else:
            status_json, version, digest, events = self._status(push)
            result = self.store.store_status(batch, push.sent_at, status_json, version, digest, events, contact)

        log.debug("lock %s: batch %s on %s stored %d record(s), duplicate=%s",
                  push.lock.lock, batch.batch_id, path, result.stored, result.duplicate)
        return result

    def _unknown_keys(self, push: Push) -> list[UnknownKey]:
        items = []
        for index, item in enumerate(push.body["items"]):
            prefix = f"items[{index}]"
            first = self._not_in_future(push, item["first_seen"], f"{prefix}.first_seen")
            last = self._not_in_future(push, item["last_seen"], f"{prefix}.last_seen")
            if last < first:
                raise RequestError(422, f"{prefix}.last_seen", f"{item['last_seen']} is before first_seen "
                                                               f"{item['first_seen']}")
            items.append(UnknownKey(
                hwid=item["hwid"], first_seen=first, last_seen=last, count=item["count"],
                tag_type=item.get("tag_type"), atqa=_lower(item.get("atqa")), sak=_lower(item.get("sak"))))
        return items

    def _last_seen(self, push: Push) -> tuple[list[SeenWindow], set[str], int | None]:
        precision = push.body["precision"]
        facts = self.directory.bundle_facts(push.lock)
        if facts is not None and precision < facts.precision:
            raise RequestError(422, "precision", f"{precision} s is finer than the lock's last-seen precision "
                                                 f"of {facts.precision} s; send windows of at least "
                                                 f"{facts.precision} s")

        items = []
        for index, item in enumerate(push.body["items"]):
            prefix = f"items[{index}]"
            start = self._not_in_future(push, item["window_start"], f"{prefix}.window_start")
            end = self._not_in_future(push, item["window_end"], f"{prefix}.window_end")
            if start % precision:
                raise RequestError(422, f"{prefix}.window_start", f"{item['window_start']} is not a multiple "
                                                                  f"of the precision ({precision} s)")
            if end - start != precision:
                raise RequestError(422, f"{prefix}.window_end", f"{item['window_end']} must be window_start "
                                                                f"+ precision ({precision} s)")
            if end > push.sent_at:
                raise RequestError(422, f"{prefix}.window_end", f"{item['window_end']} is after sent_at "
                                                                f"{push.body['sent_at']}; send a window only "
                                                                "after it has ended")
            items.append(SeenWindow(item["hwid"], start, end))

        if facts is None:
            log.warning("lock %s: bundle not readable, keys last seen not checked against it", push.lock.lock)
            return items, set(), None
        not_in_bundle = {item.hwid for item in items if item.hwid not in facts.keys}
        return items, not_in_bundle, facts.version

    def _status(self, push: Push) -> tuple[str, int | None, str | None, list[LockEvent]]:
        status = push.body["status"]
        self._not_in_future(push, status["clock"], "status.clock")
        if status["bundle_expires_at"] is not None:
            _timestamp(status["bundle_expires_at"], "status.bundle_expires_at")
        if status["last_rejected_bundle"] is not None:
            self._not_in_future(push, status["last_rejected_bundle"]["at"], "status.last_rejected_bundle.at")

        events = []
        for index, event in enumerate(status["events"]):
            at = self._not_in_future(push, event["at"], f"status.events[{index}].at")
            events.append(LockEvent(event["type"], at, event["detail"]))
        status_json = json.dumps(status, sort_keys=True, separators=(",", ":"))
        return status_json, status["bundle_version"], status["bundle_sha256"], events

    # --- logging --------------------------------------------------------------------------

    def _log_rejection(self, error: RequestError, lock: PublishedLock | None, batch_id: object, path: str) -> None:
        client_name = lock.lock if lock is not None else "unidentified client"
        # An unidentified client's message names its certificate, so each unknown or disabled
        # lock is logged, not only the first one of the minute.
        key = (client_name, error.status, error.field, str(error) if lock is None else None)
        repeats = self._rejections.count(key)
        if repeats is None:
            return
        suffix = f" ({repeats} similar rejections not logged)" if repeats else ""
        message = str(error)
        if error.field.endswith("hwid"):
            # The rejected value may be a card's full UID (in capitals, say), which the log
            # must not show; the lock gets it back in the answer.
            message = f"{error.field}: not a valid hardware id (value left out of the log)"
        log.warning("rejected %s from %s (batch %s) with %d: %s%s", path, client_name,
                    batch_id if isinstance(batch_id, str) else "-", error.status, message, suffix)


class _RepeatCounter:
    """Let a repeated log message through at most once a minute per key, counting the rest."""

    INTERVAL = 60.0

    def __init__(self):
        self._lock = threading.Lock()
        self._state: dict[tuple, tuple[float, int]] = {}

    def count(self, key: tuple) -> int | None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._state.get(key, (0.0, 0))
            if last and now - last < self.INTERVAL:
                self._state[key] = (last, suppressed + 1)
                return None
            if len(self._state) > 10000:
                self._state.clear()
            self._state[key] = (now, 0)
            return suppressed


def _discard(stream, length: int) -> None:
    """Read and drop an oversized body, so that the client, still sending, receives the 413."""
    remaining = length
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, 65536))
            if not chunk:
                return
            remaining -= len(chunk)
    except _BODY_READ_ERRORS:
        # Past cheroot's limit: the server closes the connection after the 413.
        return


class _DuplicateField(ValueError):
    pass


def _reject_duplicate_fields(pairs: list[tuple[str, object]]) -> dict:
    document = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateField(f"field {key!r} appears twice in one object")
        document[key] = value
    return document


def _reject_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _first_schema_error(validator, document: object) -> RequestError | None:
    errors = sorted(validator.iter_errors(document), key=_error_order)
    if not errors:
        return None
    error = errors[0]
    field = _field_name(error.absolute_path)

    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = _join(field, extra[0])
        return RequestError(422, name, "unknown field; remove it")
    if error.validator == "required":
        missing = [name for name in error.schema["required"] if name not in error.instance]
        return RequestError(422, _join(field, missing[0]), "missing; it is required")
    if error.validator == "type":
        expected = error.schema["type"]
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return RequestError(422, field or "body", f"must be {expected}, got {_json_type(error.instance)}")
    if error.validator in ("pattern", "anyOf") and "description" in _described(error):
        return RequestError(422, field, f"{error.instance!r} is invalid; expected {_described(error)['description']}")
    return RequestError(422, field or "body", error.message)


def _integer_fields(document: dict):
    """Yield (field, value) for every field the schemas declare as integer."""
    for index, item in enumerate(document.get("items", ())):
        if "count" in item:
            yield f"items[{index}].count", item["count"]
    if "precision" in document:
        yield "precision", document["precision"]
    status = document.get("status")
    if status is not None:
        yield "status.bundle_version", status["bundle_version"]
        yield "status.spool_dropped", status["spool_dropped"]
        if status["last_rejected_bundle"] is not None:
            yield "status.last_rejected_bundle.version", status["last_rejected_bundle"]["version"]
        for name, value in (status.get("counters") or {}).items():
            yield f"status.counters.{name}", value


def _error_order(error) -> tuple:
    # Errors nearer the root come first, then in document order. Ints and strings never meet in
    # one position, because each level of the path is either an array or an object.
    return ([(isinstance(part, int), part) for part in error.absolute_path], error.validator)


def _described(error) -> dict:
    # A pattern failing inside a $ref'd definition carries its description on that definition.
    schema = error.schema
    if "description" in schema:
        return schema
    parent = error.parent
    while parent is not None:
        if "description" in parent.schema:
            return parent.schema
        parent = parent.parent
    return {}


def _field_name(path) -> str:
    name = ""
    for part in path:
        name = f"{name}[{part}]" if isinstance(part, int) else _join(name, part)
    return name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _timestamp(value: str, field: str) -> int:
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise RequestError(422, field, f"{value!r} is not a valid date and time") from None
    return int(parsed.astimezone(timezone.utc).timestamp() // 1)


def _content_digest(body: dict) -> str:
    # sent_at is left out: a lock may refresh it when it retries a batch.
    content = {key: value for key, value in body.items() if key != "sent_at"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None
