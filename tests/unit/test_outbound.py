"""The WebSocket output: the session's typed items encoded as the client asked, and
the framing of the batched sender (RFC 6455 §5.2, server side: unmasked)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from duplexvoice.audio import FRAME_BYTES
from duplexvoice.orchestrator.sessions.output import OutputItem, SendAudio
from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.orchestrator.transports.ws_output import (
    encode_frame,
    encode_frames,
    wire_messages,
)
from duplexvoice.wire.messages import EndReason, Interrupt, Pause, StateChanged, UtteranceEnd
from duplexvoice.wire.protocol import ConfigMessage, decode_binary_frame

pytestmark = pytest.mark.unit


def parse(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each frame in ``data``; every frame must be final, unmasked."""
    out = []
    while data:
        b0, b1 = data[0], data[1]
        assert b0 & 0x80 and not b0 & 0x70  # FIN, no RSV bits
        assert not b1 & 0x80  # servers never mask
        n, pos = b1 & 0x7F, 2
        if n == 126:
            (n,), pos = struct.unpack("!H", data[2:4]), 4
        elif n == 127:
            (n,), pos = struct.unpack("!Q", data[2:10]), 10
        out.append((b0 & 0x0F, data[pos:pos + n]))
        data = data[pos + n:]
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1932, 65535, 65536, 200_000])
def test_lengths_round_trip_at_every_header_size(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert parse(encode_frame(payload, 0x2)) == [(0x2, payload)]


def test_a_batch_keeps_order_and_kinds() -> None:
    batch: list[str | bytes] = ['{"type":"state"}', b"\x00" * 1932, "é", b""]
    assert parse(encode_frames(batch)) == [
        (0x1, b'{"type":"state"}'), (0x2, b"\x00" * 1932), (0x1, "é".encode()), (0x2, b"")]


PCM = (bytes(range(256)) * 8)[:FRAME_BYTES]


def test_messages_are_json_text_and_audio_follows_the_format_asked() -> None:
    settings = SessionSettings()
    items: list[OutputItem] = [StateChanged("SPEAKING"), SendAudio(1, 1, PCM), Pause(1),
                               Interrupt(1, EndReason.STOPPED)]
    out = wire_messages(items, settings)
    assert [json.loads(m)["type"] for m in out if isinstance(m, str)] == [
        "state", "audio", "pause", "interrupt"]
    audio = json.loads(out[1])
    assert audio == {"type": "audio", "pcm": base64.b64encode(PCM).decode(),
                     "sample_rate": 48_000, "frame_ms": 20, "sequence": 1, "utterance_id": 1}
    assert json.loads(out[3]) == {"type": "interrupt", "utterance_id": 1, "reason": "stopped"}
    # Binary from the next utterance on: utterance 1 stays JSON to its end.
    assert settings.apply(ConfigMessage(output_format="binary"), (), next_utterance=2) is None
    out = wire_messages([SendAudio(1, 2, PCM), UtteranceEnd(1, EndReason.COMPLETED, 2),
                         SendAudio(2, 3, PCM)], settings)
    assert isinstance(out[0], str) and json.loads(out[0])["sequence"] == 2
    assert isinstance(out[2], bytes)
    frame = decode_binary_frame(out[2])
    assert (frame.utterance_id, frame.sequence, frame.pcm) == (2, 3, PCM)


def test_a_frame_of_the_wrong_size_is_refused_in_either_format() -> None:
    with pytest.raises(ValueError):
        wire_messages([SendAudio(1, 1, b"\x00" * 10)], SessionSettings())
    with pytest.raises(ValueError):
        wire_messages([SendAudio(1, 1, b"\x00" * 10)], SessionSettings(output_format="binary"))
