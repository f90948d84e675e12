"""Shared pieces of the hostile-input fuzzers (imported by tests/fuzz as ``fuzzkit``).

Strategies for every message of ``proto/parkd.proto`` with fields at their
extremes, raw protobuf wire data, hostile byte streams; a capture of every
twisted.logger event; framing helpers; :func:`fuzz`, the per-test settings
(profiles in tests/fuzz/conftest.py).
"""

from __future__ import annotations

import functools
import math
import os
import struct
from contextlib import contextmanager

from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from parkd.proto import parkd_pb2 as pb
from parkd.wire import split_envelopes

# ------------------------------------------------------------------ settings

_PROFILES = {"soak": "parkd-fuzz-soak", "parkd-fuzz-soak": "parkd-fuzz-soak"}
PROFILE = _PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", ""), "parkd-fuzz")
SCALE = int(os.environ.get("PARKD_FUZZ_SCALE", "50")) if PROFILE == "parkd-fuzz-soak" else 1


def fuzz(examples: int, **overrides) -> settings:
    """Settings for one fuzz test: ``examples`` by default, SCALE times that in the soak profile."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * SCALE, **overrides)


# ------------------------------------------------------------------ log capture


class Logs:
    """Every twisted.logger event published while the capture was open."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def at_least(self, level: LogLevel) -> list[dict]:
        return [e for e in self.events if e.get("log_level", LogLevel.info) >= level]

    def errors(self) -> list[str]:
        """Text of every error/critical event (log.failure and Unhandled Errors are critical)."""
        return [_text(e) for e in self.at_least(LogLevel.error)]

    def warnings(self) -> list[str]:
        return [_text(e) for e in self.events if e.get("log_level") == LogLevel.warn]

    def formats(self, level: LogLevel) -> set[str]:
        """The distinct log_format strings of the events at ``level``."""
        return {str(e.get("log_format")) for e in self.events if e.get("log_level") == level}

    def closing(self) -> list[dict]:
        """The once-per-connection 'closing <port> connection' warnings of EnvelopeProtocol.reject."""
        return [e for e in self.events if str(e.get("log_format", "")).startswith("closing {port} connection")]

    def clear(self) -> None:
        self.events.clear()


def _text(event: dict) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text[:2000]


@contextmanager
def captured_logs():
    logs = Logs()
    globalLogPublisher.addObserver(logs)
    try:
        yield logs
    finally:
        globalLogPublisher.removeObserver(logs)


# ------------------------------------------------------------------ framing


def framed(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def frame(envelope: pb.Envelope) -> bytes:
    return framed(envelope.SerializeToString())


def envelopes_in(data: bytes) -> list[pb.Envelope]:
    """Parse what a protocol wrote (parkd.wire.split_envelopes)."""
    return split_envelopes(data)


def feed(proto, data: bytes, cuts: list[int]) -> None:
    """Deliver ``data`` to ``proto`` split at ``cuts`` (positions, any order)."""
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        if cut > last:
            proto.dataReceived(data[last:cut])
            last = cut


# ------------------------------------------------------------------ scalar strategies

U64_EDGES = [0, 1, 2, 3, 7, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**62, 2**62 + 1, 2**63 - 1, 2**63,
             2**64 - 2, 2**64 - 1]  # fmt: skip
U32_EDGES = [0, 1, 2, 3, 4, 99, 2**16, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
FLOAT_EDGES = [0.0, -0.0, 1.0, -1.0, 1e-310, 5e-324, 1.7e308, -1.7e308, math.inf, -math.inf, math.nan, 2.0**63, 1e12]

u64 = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, 20), st.integers(0, 2**64 - 1))
u32 = st.one_of(st.sampled_from(U32_EDGES), st.integers(0, 10), st.integers(0, 2**32 - 1))
doubles = st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(allow_nan=True, allow_infinity=True))


def blobs(limit: int = 4096):
    """Bytes: small random ones, empty, and large repetitive ones up to ``limit``."""
    return st.one_of(
        st.binary(max_size=48),
        st.builds(lambda unit, n: (unit * n)[:limit], st.binary(min_size=1, max_size=4), st.integers(1, limit)),
    )


def texts(known=(), limit: int = 4096):
    """Strings: the known ones, empty, unicode (surrogates excluded: protobuf refuses them),
    control characters, and large repetitive ones up to ``limit`` characters."""
    chars = st.characters(exclude_categories=("Cs",))
    return st.one_of(
        st.sampled_from(list(known) + ["", " ", "\x00", "north\x00", "NORTH", "nörth", "🚗" * 3]),
        st.text(chars, max_size=24),
        st.builds(lambda unit, n: (unit * n)[:limit], st.text(chars, min_size=1, max_size=3), st.integers(1, limit)),
    )


# ------------------------------------------------------------------ protobuf messages

BODY_FIELDS = {f.name: f for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields}
RAFT_KINDS = [f.name for f in BODY_FIELDS.values() if f.number < 20 and f.name != "peer_hello"]  # raft messages
CLIENT_KINDS = [f.name for f in BODY_FIELDS.values() if f.number >= 20]


def _field_strategy(field, lots, limit):
    if field.type == FD.TYPE_UINT64:
        return u64
    if field.type == FD.TYPE_UINT32:
        if field.name == "kind":  # LogEntry.kind: the known kinds, then anything
            return st.one_of(st.sampled_from([0, 1, 2]), u32)
        return u32
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_DOUBLE:
        return doubles
    if field.type == FD.TYPE_STRING:
        return texts(lots, limit)
    if field.type == FD.TYPE_BYTES:
        return blobs(limit)
    if field.type == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(0, 2**31 - 1))
    if field.type == FD.TYPE_MESSAGE:
        return message_of(field.message_type, lots, limit)
    raise AssertionError(f"no strategy for {field.full_name}")


@functools.lru_cache(maxsize=None)
def message_of(descriptor, lots=(), limit: int = 4096):
    """Any instance of the protobuf message ``descriptor`` (each field set or left at its default)."""
    cls = getattr(pb, descriptor.name)
    parts = {}
    for field in descriptor.fields:
        value = _field_strategy(field, lots, limit)
        if _repeated(field):
            parts[field.name] = st.lists(value, max_size=4)
        else:
            parts[field.name] = st.one_of(st.none(), value)

    @st.composite
    def build(draw):
        message = cls()
        for name, strategy in parts.items():
            value = draw(strategy)
            if value is None:
                continue
            target = getattr(message, name) if not isinstance(value, (int, float, bool, str, bytes)) else None
            if isinstance(value, list):
                container = getattr(message, name)
                for item in value:
                    if isinstance(item, (int, float, bool, str, bytes)):
                        container.append(item)
                    else:
                        container.add().CopyFrom(item)
            elif target is not None:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()


def _repeated(field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return is_repeated
    return field.label == FD.LABEL_REPEATED


def envelopes(kinds=None, lots=("north", "south"), limit: int = 4096):
    """An Envelope with one body of ``kinds`` (default: every member of the oneof)."""
    return _envelopes(tuple(kinds or BODY_FIELDS), tuple(lots), limit)


@functools.lru_cache(maxsize=None)
def _envelopes(kinds, lots, limit):

    def wrap(kind, body):
        envelope = pb.Envelope()
        getattr(envelope, kind).CopyFrom(body)
        return envelope

    return st.one_of(
        *[st.builds(wrap, st.just(k), message_of(BODY_FIELDS[k].message_type, lots, limit)) for k in kinds]
    )


# ------------------------------------------------------------------ raw wire data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@functools.lru_cache(maxsize=None)
def proto_garbage(depth: int = 2):
    return _proto_garbage(depth)


@st.composite
def _proto_garbage(draw, depth):
    """Protobuf wire data that parses often: real and unknown field numbers, any wire
    type, varints up to 10 bytes (uint64 wraparound), nested bodies, bad lengths."""
    numbers = st.one_of(st.sampled_from([f.number for f in BODY_FIELDS.values()]), st.integers(1, 40),
                        st.sampled_from([0, 2**29 - 1, 19000]))  # fmt: skip
    out = bytearray()
    for _ in range(draw(st.integers(0, 4))):
        number = draw(numbers)
        wire_type = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 4, 5, 6, 7]))
        out += _varint((number << 3) | wire_type)
        if wire_type == 0:
            out += _varint(draw(st.one_of(u64, st.integers(0, 2**70))))
        elif wire_type == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire_type == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        elif wire_type == 2:
            if depth and draw(st.booleans()):
                inner = draw(proto_garbage(depth - 1))
            else:
                inner = draw(st.binary(max_size=24))
            length = draw(st.one_of(st.just(len(inner)), st.integers(0, 2**35)))
            out += _varint(length) + inner
    return bytes(out)


# ------------------------------------------------------------------ hostile streams


def hostile_stream(envelope_strategy, max_length: int, pieces: int = 6):
    """Bytes for one connection: framed envelopes, framed garbage, oversized or wrong
    length prefixes, truncated frames and raw noise, concatenated."""
    return _hostile_stream(envelope_strategy, max_length, pieces)


@functools.lru_cache(maxsize=None)
def _hostile_stream(envelope_strategy, max_length, pieces):
    piece = st.one_of(
        envelope_strategy.map(frame),
        proto_garbage().map(framed),
        st.binary(max_size=32).map(framed),
        st.integers(max_length + 1, 2**32 - 1).map(lambda n: struct.pack("!I", n)),
        st.binary(max_size=64),
        st.tuples(envelope_strategy, st.integers(1, 8)).map(lambda t: frame(t[0])[: -t[1]] or b"\x00"),
    )
    return st.lists(piece, min_size=1, max_size=pieces).map(b"".join)


# ------------------------------------------------------------------ without hypothesis


def random_message(rng, descriptor, lots=(), limit: int = 4096):
    """Like :func:`message_of`, drawn with a ``random.Random`` (for process tests)."""
    message = getattr(pb, descriptor.name)()
    for field in descriptor.fields:
        if rng.random() < 0.25:
            continue  # left at its default
        count = rng.randrange(4) if _repeated(field) else 1
        values = [_random_value(rng, field, lots, limit) for _ in range(count)]
        if _repeated(field):
            container = getattr(message, field.name)
            for value in values:
                if field.type == FD.TYPE_MESSAGE:
                    container.add().CopyFrom(value)
                else:
                    container.append(value)
        elif field.type == FD.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(values[0])
        else:
            setattr(message, field.name, values[0])
    return message


def random_envelope(rng, kinds=None, lots=(), limit: int = 4096) -> pb.Envelope:
    kind = rng.choice(list(kinds or BODY_FIELDS))
    envelope = pb.Envelope()
    getattr(envelope, kind).CopyFrom(random_message(rng, BODY_FIELDS[kind].message_type, lots, limit))
    return envelope


def _random_value(rng, field, lots, limit):
    roll = rng.random()
    if field.type == FD.TYPE_UINT64:
        return rng.choice(U64_EDGES) if roll < 0.5 else rng.randrange(21) if roll < 0.8 else rng.getrandbits(64)
    if field.type == FD.TYPE_UINT32:
        if field.name == "kind":
            return rng.choice([0, 1, 2]) if roll < 0.8 else rng.getrandbits(32)
        return rng.choice(U32_EDGES) if roll < 0.5 else rng.randrange(11) if roll < 0.8 else rng.getrandbits(32)
    if field.type == FD.TYPE_BOOL:
        return roll < 0.5
    if field.type == FD.TYPE_DOUBLE:
        return rng.choice(FLOAT_EDGES) if roll < 0.5 else struct.unpack("<d", rng.randbytes(8))[0]
    if field.type == FD.TYPE_STRING:
        if roll < 0.4 and lots:
            return rng.choice(list(lots))
        codes = [rng.choice((rng.randrange(32, 127), rng.randrange(0xD800))) for _ in range(rng.randrange(12))]
        text = "".join(map(chr, codes))
        return (text * rng.randrange(1, 400))[:limit] if roll > 0.9 and text else text
    if field.type == FD.TYPE_BYTES:
        data = rng.randbytes(rng.randrange(40))
        return (data * rng.randrange(1, 400))[:limit] if roll > 0.9 and data else data
    if field.type == FD.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values]) if roll < 0.8 else rng.randrange(2**31)
    if field.type == FD.TYPE_MESSAGE:
        return random_message(rng, field.message_type, lots, limit)
    raise AssertionError(f"no generator for {field.full_name}")
