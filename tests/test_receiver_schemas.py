"""The receiver's two compilations of each request schema accept exactly the same bodies.

fastjsonschema decides (it is fast), jsonschema explains a rejection (it names the field); if
they disagreed, the receiver would store a body the schema forbids or answer with a vague
message. Bodies here are valid pushes with random mutations: values replaced by arbitrary
JSON, fields removed or added.
"""

from __future__ import annotations

import copy
import json

import fastjsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.app import ROUTES, load_schemas

SCHEMAS = load_schemas()

VALID = {
    "/v1/unknown-keys": {"batch_id": "batch-0000000000000001", "sent_at": "2026-12-04T20:00:00Z", "items": [
        {"hwid": "04:a2:3b:4c", "first_seen": "2026-12-04T19:00:00Z", "last_seen": "2026-12-04T19:30:00Z",
         "count": 3, "tag_type": "Type2Tag", "atqa": "0044", "sak": "00"}]},
    "/v1/last-seen": {"batch_id": "batch-0000000000000002", "sent_at": "2026-12-04T20:00:00Z", "precision": 3600,
                      "items": [{"hwid": "04:a2:3b:4c", "window_start": "2026-12-04T18:00:00Z",
                                 "window_end": "2026-12-04T19:00:00Z"}]},
    "/v1/status": {"batch_id": "batch-0000000000000003", "sent_at": "2026-12-04T20:00:00Z", "status": {
        "bundle_version": 7, "bundle_sha256": "ab" * 32, "bundle_expires_at": "2026-12-11T20:00:00Z",
        "clock": "2026-12-04T20:00:00Z", "clock_behind_floor": False, "uptime": 3.5,
        "reader": {"healthy": True, "last_error": None},
        "last_rejected_bundle": {"at": "2026-12-04T10:00:00Z", "reason": "bad signature", "version": 8},
        "spool_dropped": 0, "events": [{"type": "door-forced", "at": "2026-12-04T19:59:00Z", "detail": None}]}},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["04:a2:3b:4c", "04:A2", "04:a2\n", "2026-12-04T20:00:00Z",
                                              "2026-12-04T20:00:00Z\n", "ab" * 32, "door-forced", "x" * 70]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)


def containers(node, path=()):
    """Yield the path of every object and array inside ``node``, including ``node``."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from containers(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, (dict, list)):
                yield from containers(value, path + (index,))


def at(node, path):
    for part in path:
        node = node[part]
    return node


def edits(value) -> st.SearchStrategy:
    """Small changes to a valid value that are easy to get wrong in a validator."""
    if isinstance(value, str):
        return st.sampled_from([value + "\n", "\n" + value, value.upper(), value[:-1], value + value[-1:], " " + value])
    if isinstance(value, bool) or value is None:
        return st.sampled_from([0, 1, "true", None if value is not None else False])
    if isinstance(value, int):
        return st.sampled_from([float(value), -value - 1, str(value), True, 2**63, -1])
    return st.just(value)


@st.composite
def mutated_bodies(draw):
    route = draw(st.sampled_from(sorted(ROUTES)))
    body = copy.deepcopy(VALID[route])
    for _ in range(draw(st.integers(1, 3))):
        parent = at(body, draw(st.sampled_from(list(containers(body)))))
        keys = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
        action = draw(st.sampled_from(["replace", "remove", "add", "edit"]))
        if action == "edit" and keys:
            key = draw(st.sampled_from(keys))
            parent[key] = draw(edits(parent[key]))
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        elif action == "add":
            parent.append(draw(json_values))
        elif keys and action == "remove":
            parent.pop(draw(st.sampled_from(keys)))
        elif keys:
            parent[draw(st.sampled_from(keys))] = draw(json_values)
    return route, body


def fast_accepts(route: str, body) -> bool:
    try:
        SCHEMAS[route].accept(body)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_valid_examples_accepted_by_both(route):
    assert fast_accepts(route, VALID[route])
    assert SCHEMAS[route].explain.is_valid(VALID[route])


@settings(max_examples=400, deadline=None)
@given(mutated_bodies())
def test_validators_agree_on_mutated_bodies(case):
    route, body = case
    body = json.loads(json.dumps(body))  # only what JSON can carry

    assert fast_accepts(route, body) == SCHEMAS[route].explain.is_valid(body)
