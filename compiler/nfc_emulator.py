"""Card emulators on nfcpy's ``udp`` driver, bound to 127.0.0.1, for the real read path.

For development, tests and ``doorlock demo``; a lock never runs it, so it lives in the admin
package and not in ``lockclient``. Run as a process (killing it is taking the card away)::

    python -m compiler.nfc_emulator --port 41001 --type2 04a23b4c5d6e7f
    python -m compiler.nfc_emulator --port 41002 --type3 012e4cd2a1b3c4d5

``--type2`` emulates an NXP NTAG213 with a 7-byte UID (ATQA 44 00, SAK 00). nfcpy's reader
probes an NXP tag with AUTHENTICATE (no answer, so the tag goes mute and is selected again)
and GET_VERSION (answered with the NTAG213 version), then may READ pages; all of that is
answered here. ``--type3`` emulates a FeliCa card with the given IDm through nfcpy's own
``Type3TagEmulation``.

nfcpy 1.0.4 binds the listening socket to 0.0.0.0 whatever host the path names; this module
replaces ``Device._bind_socket`` so the emulator listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import errno
import logging
import operator
import signal
import socket
import sys
import time
from functools import reduce

import nfc
import nfc.clf
import nfc.clf.udp
import nfc.tag
import nfc.tag.tt3

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
NTAG213_VERSION = bytes.fromhex("0004040201000f03")
TYPE2_ATQA = bytes.fromhex("4400")
TYPE2_SAK = bytes.fromhex("00")
FELICA_PMM = bytes.fromhex("03014b024f4993ff")
FELICA_SYSTEM_CODE = bytes.fromhex("12fc")


def _bind_loopback(self, time_to_return):
    """Replacement for ``nfc.clf.udp.Device._bind_socket`` that binds 127.0.0.1 only."""
    address = (LOOPBACK, self.addr[1])
    while time.time() < time_to_return:
        try:
            self.socket.bind(address)
            return True
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return False


def bind_to_loopback() -> None:
    nfc.clf.udp.Device._bind_socket = _bind_loopback


def type2_memory(uid: bytes) -> bytearray:
    """Pages 0-15 of an NTAG213-like tag: UID with check bytes, lock bytes, capability container."""
    check0 = 0x88 ^ uid[0] ^ uid[1] ^ uid[2]
    check1 = uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
    memory = bytearray(uid[0:3]) + bytes([check0]) + uid[3:7] + bytes([check1, 0x48, 0x00, 0x00])
    memory += bytes.fromhex("e1101200")  # capability container: NDEF 1.0, 144 bytes, read/write
    memory += bytes.fromhex("0300fe00") + bytes(4 * 11)  # empty NDEF message, then zeros
    return memory


class Type2Card:
    """An emulated Type 2 tag with a 7-byte UID, serving one reader over udp."""

    def __init__(self, uid: bytes):
        if len(uid) != 7:
            raise ValueError("the Type 2 emulator supports 7-byte UIDs")
        self.uid = uid
        self.memory = type2_memory(uid)
        cascade1 = bytes([0x88]) + uid[0:3]
        cascade2 = uid[3:7]
        self.sdd = [cascade1 + bytes([reduce(operator.xor, cascade1)]),
                    cascade2 + bytes([reduce(operator.xor, cascade2)])]

    def local_target(self) -> nfc.clf.LocalTarget:
        target = nfc.clf.LocalTarget("106A")
        target.sens_res = TYPE2_ATQA
        target.sel_res = TYPE2_SAK
        target.sdd_res = self.uid
        return target

    def answer(self, command: bytes) -> bytes | None:
        """Return the response to one command frame, or None to stay silent."""
        if command in (b"\x26", b"\x52"):
            return TYPE2_ATQA
        if command == b"\x93\x20":
            return self.sdd[0]
        if command == b"\x95\x20":
            return self.sdd[1]
        if command[:2] == b"\x93\x70":
            return bytes([0x04])  # cascade bit: the UID continues at level 2
        if command[:2] == b"\x95\x70":
            return TYPE2_SAK
        if command[:1] == b"\x60":
            return NTAG213_VERSION
        if command[:1] == b"\x30" and len(command) >= 2:
            start = (command[1] * 4) % len(self.memory)
            doubled = self.memory + self.memory
            return bytes(doubled[start:start + 16])
        return None  # AUTHENTICATE and anything else: a real tag goes mute

    def serve(self, clf: nfc.ContactlessFrontend, stop) -> None:
        while not stop():
            activated = clf.listen(self.local_target(), 1.0)
            if activated is None:
                continue
            command = bytes(activated.tt2_cmd or b"")
            while not stop():
                try:
                    received = clf.exchange(self.answer(command), 2.0)
                except (nfc.clf.BrokenLinkError, nfc.clf.TimeoutError):
                    break
                except nfc.clf.CommunicationError:
                    continue
                if received is None:
                    break
                command = bytes(received)


class Type3Card:
    """An emulated FeliCa card with the given IDm, serving one reader over udp."""

    def __init__(self, idm: bytes):
        if len(idm) != 8:
            raise ValueError("a FeliCa IDm is 8 bytes")
        self.idm = idm

    def serve(self, clf: nfc.ContactlessFrontend, stop) -> None:
        def on_startup(target):
            target.brty = "212F"
            target.sensf_res = bytearray(b"\x01" + self.idm + FELICA_PMM + FELICA_SYSTEM_CODE)
            return target

        def on_connect(tag):
            tag.add_service(0x0009, lambda *args: None, lambda *args: False)
            tag.add_service(0x000B, lambda *args: None, lambda *args: False)
            return True

        while not stop():
            clf.connect(card={"on-startup": on_startup, "on-connect": on_connect, "timeout": 1.0},
                        terminate=stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="UDP port on 127.0.0.1")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--type2", metavar="UID", help="7-byte UID as 14 hex digits")
    kind.add_argument("--type3", metavar="IDM", help="8-byte IDm as 16 hex digits")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)

    bind_to_loopback()
    card = Type2Card(bytes.fromhex(args.type2)) if args.type2 else Type3Card(bytes.fromhex(args.type3))

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    clf = nfc.ContactlessFrontend(f"udp:{LOOPBACK}:{args.port}")
    print("ready", flush=True)
    try:
        card.serve(clf, lambda: bool(stopping))
    except KeyboardInterrupt:
        pass
    finally:
        clf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
