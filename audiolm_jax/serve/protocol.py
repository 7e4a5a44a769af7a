"""Kyutai's Moshi websocket protocol (``moshi/server.py``, ``rust/protocol.md``): every
message is binary, its first byte the kind, the rest the payload. Parsing is strict and each
rejection carries a one-line reason, because the server reports it to the client as an
error message (kind 0x05) and in its log."""

from __future__ import annotations

import dataclasses
import enum
import json
import struct

MAX_MESSAGE_BYTES = 1 << 20  # Opus pages of 80 ms are a few hundred bytes; 1 MB is generous
PROTOCOL_VERSION = 0
MODEL_VERSION = 0


class Kind(enum.IntEnum):
    HANDSHAKE = 0x00  # server -> client when the model is ready (two little-endian u32)
    AUDIO = 0x01  # Ogg-Opus pages, 24 kHz mono, both directions
    TEXT = 0x02  # UTF-8 text pieces, server -> client (PAD / EPAD never sent)
    CONTROL = 0x03  # one byte, see Control
    METADATA = 0x04  # a JSON object
    ERROR = 0x05  # UTF-8 reason, server -> client; the server then closes
    PING = 0x06  # empty


class Control(enum.IntEnum):
    START = 0x00
    END_TURN = 0x01
    PAUSE = 0x02
    RESTART = 0x03


# What a client may send; text, errors and handshakes come only from the server.
CLIENT_KINDS = frozenset({Kind.AUDIO, Kind.CONTROL, Kind.METADATA, Kind.PING})


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``str(e)`` is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class Message:
    kind: Kind
    payload: bytes = b""

    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> dict:
        return json.loads(self.payload.decode("utf-8"))


# ----------------------------------------------------------------------------- building
def encode(kind: Kind, payload: bytes = b"") -> bytes:
    return bytes([int(kind)]) + bytes(payload)


def handshake(protocol_version: int = PROTOCOL_VERSION, model_version: int = MODEL_VERSION) -> bytes:
    return encode(Kind.HANDSHAKE, struct.pack("<II", protocol_version, model_version))


def audio(pages: bytes) -> bytes:
    return encode(Kind.AUDIO, pages)


def text(piece: str) -> bytes:
    return encode(Kind.TEXT, piece.encode("utf-8"))


def control(code: Control) -> bytes:
    return encode(Kind.CONTROL, bytes([int(code)]))


def metadata(obj: dict) -> bytes:
    return encode(Kind.METADATA, json.dumps(obj).encode("utf-8"))


def error(reason: str) -> bytes:
    return encode(Kind.ERROR, one_line(reason).encode("utf-8"))


def ping() -> bytes:
    return encode(Kind.PING)


def one_line(reason: str, limit: int = 300) -> str:
    line = " ".join(str(reason).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ----------------------------------------------------------------------------- parsing
def parse(data, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Raw websocket data -> :class:`Message`, checking the kind and that the payload fits it
    (UTF-8 text, a JSON object, a known control code, an empty ping)."""
    if isinstance(data, str):
        raise ProtocolError("text websocket frame: the protocol is binary (kind byte + payload)")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"unsupported message type {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ProtocolError("empty message: no kind byte")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        kind = Kind(data[0])
    except ValueError:
        raise ProtocolError(f"unknown message kind 0x{data[0]:02x}") from None
    payload = data[1:]
    if kind == Kind.HANDSHAKE and len(payload) not in (0, 8):
        raise ProtocolError(f"handshake payload of {len(payload)} bytes (want 0 or 8)")
    if kind == Kind.AUDIO and not payload:
        raise ProtocolError("audio message without Ogg-Opus data")
    if kind in (Kind.TEXT, Kind.ERROR):
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{kind.name.lower()} message is not UTF-8 ({e.reason} at "
                                f"byte {e.start})") from None
    if kind == Kind.CONTROL:
        if len(payload) != 1:
            raise ProtocolError(f"control message of {len(payload)} payload bytes (want 1)")
        try:
            Control(payload[0])
        except ValueError:
            raise ProtocolError(f"unknown control code 0x{payload[0]:02x}") from None
    if kind == Kind.METADATA:
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProtocolError(f"metadata is not JSON: {one_line(e)}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"metadata is a JSON {type(obj).__name__}, not an object")
    if kind == Kind.PING and payload:
        raise ProtocolError(f"ping with a {len(payload)}-byte payload (want none)")
    return Message(kind, payload)


def parse_from_client(data, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """:func:`parse`, then only the kinds a client may send."""
    msg = parse(data, max_bytes)
    if msg.kind not in CLIENT_KINDS:
        raise ProtocolError(f"a client may not send {msg.kind.name.lower()} messages "
                            f"(kind 0x{int(msg.kind):02x})")
    return msg
