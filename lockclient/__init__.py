"""The lock daemon: fetch, verify and store bundles, decide taps, read cards, drive the door.

Keep imports here light: the device starts this package at boot and must not pull in
pyyaml, jsonschema or anything the compiler needs.
"""
