"""The WebSocket codec: every client message valid and invalid, server encodings, the
binary frame header, and a seeded fuzz that parsing never raises."""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

import pytest

from duplexvoice.wire.protocol import (
    BINARY_FRAME_BYTES,
    BINARY_HEADER_BYTES,
    FLAG_LAST,
    INVALID_AUDIO,
    INVALID_CONFIG,
    INVALID_MESSAGE,
    MESSAGE_TOO_LARGE,
    TEXT_TOO_LONG,
    AudioInput,
    ClientMessage,
    ConfigMessage,
    ControlMessage,
    PlaybackMessage,
    ProtocolError,
    ProtocolLimits,
    TextMessage,
    UserTextMessage,
    audio_message,
    decode_binary_frame,
    encode_binary_frame,
    encode_json,
    parse_client_message,
)

pytestmark = pytest.mark.unit

LIMITS = ProtocolLimits(max_message_bytes=4096, max_text_chars=100)
RATE = 16_000
FRAME = bytes(range(256)) * 7 + bytes(128)  # 1920 bytes, not all zero
B64 = base64.b64encode(b"\x01\x02\x03\x04").decode()


def parse(raw: str | bytes) -> ClientMessage | ProtocolError:
    return parse_client_message(raw, LIMITS, RATE)


def j(**fields: Any) -> str:
    return json.dumps(fields)


VALID: list[tuple[str | bytes, ClientMessage]] = [
    (j(type="text", text="hi"), TextMessage("hi", True)),
    (j(type="text", text="hi", is_final=False), TextMessage("hi", False)),
    (j(type="text", text="x" * 100), TextMessage("x" * 100)),
    (j(type="text", text="héllo ☃", extra={"a": 1}), TextMessage("héllo ☃")),
    (j(type="user_text", text="What time is it?"), UserTextMessage("What time is it?")),
    (j(type="control", command="PAUSE"), ControlMessage("PAUSE")),
    (j(type="control", command="RESUME"), ControlMessage("RESUME")),
    (j(type="control", command="STOP", why="x"), ControlMessage("STOP")),
    (j(type="config"), ConfigMessage()),
    (j(type="config", future_knob=3), ConfigMessage()),
    (j(type="config", voice="kokoro-en"), ConfigMessage(voice="kokoro-en")),
    (j(type="config", mode="tts"), ConfigMessage(mode="tts")),
    (j(type="config", mode="conversation"), ConfigMessage(mode="conversation")),
    (j(type="config", input_sample_rate=8000), ConfigMessage(input_sample_rate=8000)),
    (j(type="config", input_sample_rate=48000), ConfigMessage(input_sample_rate=48000)),
    (j(type="config", output_format="binary"), ConfigMessage(output_format="binary")),
    (j(type="config", output_format="json"), ConfigMessage(output_format="json")),
    (j(type="config", language="en", reply="echo"), ConfigMessage(language="en", reply="echo")),
    (j(type="audio", pcm=B64), AudioInput(b"\x01\x02\x03\x04", RATE)),
    (j(type="audio", pcm=B64, sample_rate=RATE, x=1), AudioInput(b"\x01\x02\x03\x04", RATE)),
    (j(type="playback", utterance_id=1, played_ms=0), PlaybackMessage(1, 0.0)),
    (j(type="playback", utterance_id=7, played_ms=12.5), PlaybackMessage(7, 12.5)),
    (b"\x00\x01" * 480, AudioInput(b"\x00\x01" * 480, RATE)),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_messages(raw: str | bytes, expected: ClientMessage) -> None:
    got = parse(raw)
    assert got == expected
    assert type(got) is type(expected)


INVALID: list[tuple[str, str | bytes, str]] = [
    # framing
    ("bad json", "{not json", INVALID_MESSAGE),
    ("truncated json", '{"type": "text", "text": "hi"', INVALID_MESSAGE),
    ("empty frame", "", INVALID_MESSAGE),
    ("json array", json.dumps([{"type": "text", "text": "hi"}]), INVALID_MESSAGE),
    ("json string", '"text"', INVALID_MESSAGE),
    ("json null", "null", INVALID_MESSAGE),
    ("NaN in unknown field", '{"type":"text","text":"hi","x":NaN}', INVALID_MESSAGE),
    ("Infinity constant", '{"type":"text","text":"hi","x":-Infinity}', INVALID_MESSAGE),
    ("NaN constant", '{"type":"playback","utterance_id":1,"played_ms":NaN}', INVALID_MESSAGE),
    ("missing type", j(text="hi"), INVALID_MESSAGE),
    ("type not string", j(type=1), INVALID_MESSAGE),
    ("type null", j(type=None), INVALID_MESSAGE),
    ("unknown type", j(type="shout", text="hi"), INVALID_MESSAGE),
    ("type wrong case", j(type="TEXT", text="hi"), INVALID_MESSAGE),
    ("too large text frame", j(type="text", text="x" * 5000), MESSAGE_TOO_LARGE),
    ("too large non-json", "x" * 4097, MESSAGE_TOO_LARGE),
    ("too large by utf-8 bytes", j(type="text", text="☃" * 1500), MESSAGE_TOO_LARGE),
    ("too large binary", b"\x00" * 4098, MESSAGE_TOO_LARGE),
    # text
    ("text missing", j(type="text"), INVALID_MESSAGE),
    ("user_text missing", j(type="user_text"), INVALID_MESSAGE),
    ("user_text empty", j(type="user_text", text=""), INVALID_MESSAGE),
    ("user_text not string", j(type="user_text", text=["a"]), INVALID_MESSAGE),
    ("text empty", j(type="text", text=""), INVALID_MESSAGE),
    ("text not string", j(type="text", text=5), INVALID_MESSAGE),
    ("text null", j(type="text", text=None), INVALID_MESSAGE),
    ("text list", j(type="text", text=["a"]), INVALID_MESSAGE),
    ("text lone surrogate", '{"type":"text","text":"\\ud800"}', INVALID_MESSAGE),
    ("text too long", j(type="text", text="x" * 101), TEXT_TOO_LONG),
    ("is_final string", j(type="text", text="hi", is_final="true"), INVALID_MESSAGE),
    ("is_final int", j(type="text", text="hi", is_final=1), INVALID_MESSAGE),
    ("is_final null", j(type="text", text="hi", is_final=None), INVALID_MESSAGE),
    # control
    ("command missing", j(type="control"), INVALID_MESSAGE),
    ("command unknown", j(type="control", command="REWIND"), INVALID_MESSAGE),
    ("command lower case", j(type="control", command="stop"), INVALID_MESSAGE),
    ("command not string", j(type="control", command=1), INVALID_MESSAGE),
    # config
    ("mode unknown", j(type="config", mode="sing"), INVALID_CONFIG),
    ("mode not string", j(type="config", mode=1), INVALID_MESSAGE),
    ("rate too low", j(type="config", input_sample_rate=7999), INVALID_CONFIG),
    ("rate too high", j(type="config", input_sample_rate=48001), INVALID_CONFIG),
    ("rate string", j(type="config", input_sample_rate="16000"), INVALID_MESSAGE),
    ("rate float", j(type="config", input_sample_rate=16000.0), INVALID_MESSAGE),
    ("rate bool", j(type="config", input_sample_rate=True), INVALID_MESSAGE),
    ("format unknown", j(type="config", output_format="opus"), INVALID_CONFIG),
    ("format not string", j(type="config", output_format=True), INVALID_MESSAGE),
    ("voice not string", j(type="config", voice=3), INVALID_MESSAGE),
    ("voice empty", j(type="config", voice=""), INVALID_CONFIG),
    ("language blank", j(type="config", language="  "), INVALID_CONFIG),
    ("reply not string", j(type="config", reply={"name": "echo"}), INVALID_MESSAGE),
    ("one bad among good", j(type="config", voice="v", mode="x"), INVALID_CONFIG),
    # client audio
    ("pcm missing", j(type="audio"), INVALID_MESSAGE),
    ("pcm not string", j(type="audio", pcm=[1, 2]), INVALID_MESSAGE),
    ("pcm garbage", j(type="audio", pcm="!!not base64!!"), INVALID_AUDIO),
    ("pcm bad padding", j(type="audio", pcm="AQID"[:3]), INVALID_AUDIO),
    ("pcm non-ascii", j(type="audio", pcm="AQ☃D"), INVALID_AUDIO),
    ("pcm odd length", j(type="audio", pcm=base64.b64encode(b"\x01\x02\x03").decode()),
     INVALID_AUDIO),
    ("pcm empty", j(type="audio", pcm=""), INVALID_AUDIO),
    ("wrong sample rate", j(type="audio", pcm=B64, sample_rate=48000), INVALID_AUDIO),
    ("sample rate string", j(type="audio", pcm=B64, sample_rate="16000"), INVALID_MESSAGE),
    ("sample rate bool", j(type="audio", pcm=B64, sample_rate=True), INVALID_MESSAGE),
    ("binary odd length", b"\x00\x01\x02", INVALID_AUDIO),
    ("binary empty", b"", INVALID_AUDIO),
    # playback
    ("utterance_id missing", j(type="playback", played_ms=1), INVALID_MESSAGE),
    ("utterance_id zero", j(type="playback", utterance_id=0, played_ms=1), INVALID_MESSAGE),
    ("utterance_id negative", j(type="playback", utterance_id=-3, played_ms=1),
     INVALID_MESSAGE),
    ("utterance_id float", j(type="playback", utterance_id=1.0, played_ms=1), INVALID_MESSAGE),
    ("utterance_id bool", j(type="playback", utterance_id=True, played_ms=1), INVALID_MESSAGE),
    ("utterance_id string", j(type="playback", utterance_id="1", played_ms=1),
     INVALID_MESSAGE),
    ("played_ms missing", j(type="playback", utterance_id=1), INVALID_MESSAGE),
    ("played_ms negative", j(type="playback", utterance_id=1, played_ms=-0.5),
     INVALID_MESSAGE),
    ("played_ms string", j(type="playback", utterance_id=1, played_ms="5"), INVALID_MESSAGE),
    ("played_ms bool", j(type="playback", utterance_id=1, played_ms=False), INVALID_MESSAGE),
    ("played_ms overflows to inf", '{"type":"playback","utterance_id":1,"played_ms":1e999}',
     INVALID_MESSAGE),
    ("played_ms huge int", '{"type":"playback","utterance_id":1,"played_ms":1' + "0" * 400
     + "}", INVALID_MESSAGE),
]


@pytest.mark.parametrize(("name", "raw", "code"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_messages(name: str, raw: str | bytes, code: str) -> None:
    got = parse(raw)
    assert isinstance(got, ProtocolError), name
    assert got.code == code
    assert got.message
    assert got.to_message().to_wire() == {"type": "error", "code": code,
                                         "message": got.message}


def test_size_is_checked_before_json() -> None:
    # Too large and not JSON: the size error wins, so the parser never saw it.
    got = parse("{" * 5000)
    assert isinstance(got, ProtocolError) and got.code == MESSAGE_TOO_LARGE
    exact = j(type="text", text="x")
    limits = ProtocolLimits(max_message_bytes=len(exact), max_text_chars=10)
    assert parse_client_message(exact, limits, RATE) == TextMessage("x")
    limits = ProtocolLimits(max_message_bytes=len(exact) - 1, max_text_chars=10)
    got = parse_client_message(exact, limits, RATE)
    assert isinstance(got, ProtocolError) and got.code == MESSAGE_TOO_LARGE


@pytest.mark.parametrize("depth", [3000, 200_000])
def test_deep_nesting_is_refused_not_raised(depth: int) -> None:
    limits = ProtocolLimits(max_message_bytes=2_000_000)
    for raw in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        got = parse_client_message(raw, limits, RATE)
        assert isinstance(got, ProtocolError) and got.code == INVALID_MESSAGE


def test_binary_and_audio_use_session_rate() -> None:
    assert parse_client_message(b"\x00\x00", LIMITS, 8000) == AudioInput(b"\x00\x00", 8000)
    got = parse_client_message(j(type="audio", pcm=B64, sample_rate=8000), LIMITS, 8000)
    assert got == AudioInput(b"\x01\x02\x03\x04", 8000)


def test_config_given_lists_only_given_fields() -> None:
    got = parse(j(type="config", voice="v", input_sample_rate=24000, junk=1))
    assert isinstance(got, ConfigMessage)
    assert got.given() == {"voice": "v", "input_sample_rate": 24000}


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        ProtocolLimits(max_message_bytes=0)
    with pytest.raises(ValueError):
        ProtocolLimits(max_text_chars=0)


# -- server -> client ----------------------------------------------------------------


def test_audio_message_fields() -> None:
    msg = audio_message(FRAME, sequence=3, utterance_id=2)
    assert set(msg) == {"type", "pcm", "sample_rate", "frame_ms", "sequence", "utterance_id"}
    assert msg["type"] == "audio"
    assert msg["sample_rate"] == 48000 and msg["frame_ms"] == 20
    assert msg["sequence"] == 3 and msg["utterance_id"] == 2
    pcm = base64.b64decode(msg["pcm"], validate=True)
    assert len(pcm) == 1920 and pcm == FRAME
    assert json.loads(encode_json(msg)) == msg


@pytest.mark.parametrize(
    ("pcm", "sequence", "utterance_id"),
    [(FRAME[:-2], 1, 1), (FRAME + b"\x00\x00", 1, 1), (b"", 1, 1), (FRAME, 0, 1), (FRAME, 1, 0)],
)
def test_audio_message_refuses_bad_frames(pcm: bytes, sequence: int, utterance_id: int) -> None:
    with pytest.raises(ValueError):
        audio_message(pcm, sequence, utterance_id)


def test_encode_json_is_compact_and_strict() -> None:
    assert encode_json({"type": "state", "state": "LISTENING"}) == (
        '{"type":"state","state":"LISTENING"}'
    )
    assert encode_json({"text": "☃"}) == '{"text":"☃"}'
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})


# -- binary frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sequence", "utterance_id", "flags"),
    [(1, 1, 0), (42, 7, FLAG_LAST), (2**32 - 1, 2**32 - 1, 0)],
)
def test_binary_round_trip(sequence: int, utterance_id: int, flags: int) -> None:
    data = encode_binary_frame(FRAME, sequence, utterance_id, flags)
    assert len(data) == BINARY_FRAME_BYTES == 1932 and BINARY_HEADER_BYTES == 12
    frame = decode_binary_frame(data)
    assert (frame.sequence, frame.utterance_id, frame.flags) == (sequence, utterance_id, flags)
    assert frame.pcm == FRAME
    assert frame.last == bool(flags & FLAG_LAST)


def test_binary_header_layout_is_as_documented() -> None:
    data = encode_binary_frame(FRAME, sequence=0x01020304, utterance_id=0x0A0B0C0D, flags=1)
    assert data[:2] == b"DV"
    assert data[2] == 1  # version
    assert data[3] == 1  # flags
    assert data[4:8] == b"\x0d\x0c\x0b\x0a"  # utterance_id, little-endian
    assert data[8:12] == b"\x04\x03\x02\x01"  # sequence, little-endian
    assert data[12:] == FRAME


def test_binary_decode_keeps_reserved_flags() -> None:
    data = bytearray(encode_binary_frame(FRAME, 1, 1))
    data[3] = 0x81
    frame = decode_binary_frame(bytes(data))
    assert frame.flags == 0x81 and frame.last


def _header(magic: bytes = b"DV", version: int = 1, uid: int = 1, seq: int = 1) -> bytes:
    return struct.pack("<2sBBII", magic, version, 0, uid, seq)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        _header(),
        _header() + FRAME[:-1],
        _header() + FRAME + b"\x00",
        FRAME,
        _header(magic=b"VD") + FRAME,
        _header(magic=b"\x00\x00") + FRAME,
        _header(version=0) + FRAME,
        _header(version=2) + FRAME,
        _header(uid=0) + FRAME,
        _header(seq=0) + FRAME,
    ],
)
def test_binary_decode_failures(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_binary_frame(data)


@pytest.mark.parametrize(
    ("pcm", "sequence", "utterance_id", "flags"),
    [
        (FRAME[:100], 1, 1, 0),
        (FRAME, 0, 1, 0),
        (FRAME, 1, 0, 0),
        (FRAME, 2**32, 1, 0),
        (FRAME, 1, 2**32, 0),
        (FRAME, 1, 1, 0x02),
        (FRAME, 1, 1, 0x100),
    ],
)
def test_binary_encode_failures(pcm: bytes, sequence: int, utterance_id: int, flags: int) -> None:
    with pytest.raises(ValueError):
        encode_binary_frame(pcm, sequence, utterance_id, flags)


# -- fuzz ----------------------------------------------------------------------------

_PIECES = ['{"type":', '"text"', '"control"', '"config"', '"audio"', '"playback"', ",", ":",
           '"text":', '"pcm":', '"command":', '"STOP"', "true", "null", "1e999", "-1", "[",
           "]", "{", "}", '"\\ud800"', '"AQID"', "0", '"utterance_id":', '"played_ms":',
           '"mode":', '"input_sample_rate":', "16000", '"is_final":']


def test_fuzz_never_raises() -> None:
    rng = random.Random(1234)
    seen: set[type] = set()
    for _ in range(3000):
        roll = rng.random()
        raw: str | bytes
        if roll < 0.25:
            raw = rng.randbytes(rng.randrange(0, 64))
        elif roll < 0.5:
            raw = "".join(chr(rng.randrange(0, 0x110000)) for _ in range(rng.randrange(0, 40)))
        elif roll < 0.75:
            raw = "".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 12)))
        else:  # a valid message with one field mutated
            base: dict[str, Any] = dict(json.loads(rng.choice(VALID[:-1])[0]))
            key = rng.choice([*base, "type", "extra"])
            base[key] = rng.choice([None, True, 0, -1, 1.5, "", "x", [], {}, "STOP", 2**70])
            raw = json.dumps(base)
        got = parse(raw)
        assert isinstance(got, TextMessage | UserTextMessage | ControlMessage | ConfigMessage
                          | AudioInput | PlaybackMessage | ProtocolError)
        seen.add(type(got))
    assert ProtocolError in seen and len(seen) >= 4  # the fuzz reached both outcomes
