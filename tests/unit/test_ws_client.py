"""The orchestrator WebSocket client without a server: audio collection, sequence
check, the config check, WAV writing, and ``converse`` over a scripted fake connection
(what the server says, and when it closes, is the script's)."""

from __future__ import annotations

import base64
import json
import wave
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duplexvoice.audio import FRAME_BYTES
from duplexvoice.client.messages import (
    PROBE,
    AudioCollector,
    SayResult,
    SequenceCheck,
    auth_headers,
    config_message,
    parse_audio,
)
from duplexvoice.client.worker_client import write_wav
from duplexvoice.client.ws_client import Incoming, converse, models_url
from duplexvoice.wire.protocol import FLAG_LAST, audio_message, encode_binary_frame

pytestmark = pytest.mark.unit


def pcm(n: int) -> bytes:
    return bytes([n % 256]) * FRAME_BYTES


# -- parse_audio ------------------------------------------------------------------


def test_parse_binary_and_json_audio() -> None:
    frame = parse_audio(encode_binary_frame(pcm(1), 7, 2, FLAG_LAST))
    assert (frame.utterance_id, frame.sequence, frame.pcm) == (2, 7, pcm(1))
    frame = parse_audio(audio_message(pcm(3), 9, 4))
    assert (frame.utterance_id, frame.sequence, frame.pcm) == (4, 9, pcm(3))
    # Without the utterance_id extension field
    plain = {"type": "audio", "pcm": base64.b64encode(pcm(0)).decode(), "sequence": 1}
    assert parse_audio(plain).utterance_id is None


@pytest.mark.parametrize("bad", [
    b"XX" + bytes(1930),
    encode_binary_frame(pcm(0), 1, 1)[:-1],
    {"type": "audio", "pcm": base64.b64encode(b"\0" * 10).decode(), "sequence": 1},
    {"type": "audio", "pcm": "not base64!", "sequence": 1},
    {"type": "audio", "pcm": base64.b64encode(pcm(0)).decode(), "sequence": 0},
    {"type": "audio", "pcm": base64.b64encode(pcm(0)).decode(), "sequence": True},
    {"type": "audio", "sequence": 1},
])
def test_parse_audio_refuses_malformed(bad: bytes | dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_audio(bad)


# -- sequence check ---------------------------------------------------------------


def test_sequence_check() -> None:
    check = SequenceCheck()
    for seq in (1, 2, 3):
        assert check.add(seq)
    assert check.ok
    assert not check.add(5)
    assert check.gaps == [(4, 5)]
    check.add(6)
    assert not check.ok  # a gap stays a gap


# -- collector --------------------------------------------------------------------


def test_collect_binary_utterance() -> None:
    c = AudioCollector(sent_at=10.0)
    c.on_json({"type": "state", "state": "SPEAKING"}, 10.01)
    for i in range(1, 4):
        c.on_binary(encode_binary_frame(pcm(i), i, 1, FLAG_LAST if i == 3 else 0), 10.1 + i)
    assert not c.done
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "completed",
               "frames": 3}, 14.0)
    assert c.done
    r = c.result()
    assert r.pcm == pcm(1) + pcm(2) + pcm(3)
    assert r.frames == 3 and r.sequence_ok and r.errors == []
    assert r.first_audio_ms == pytest.approx(1100.0)
    assert r.total_ms == pytest.approx(4000.0)
    assert r.utterance_id == 1 and r.end_reason == "completed" and r.ok
    assert r.audio_ms == pytest.approx(60.0)
    assert r.summary()["frames"] == 3


def test_collect_json_audio_and_gap() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json(audio_message(pcm(1), 1, 1), 0.2)
    c.on_json(audio_message(pcm(2), 3, 1), 0.3)  # sequence 2 missing
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "completed"}, 0.4)
    r = c.result()
    assert r.frames == 2 and not r.sequence_ok and r.first_audio_ms == pytest.approx(200.0)


def test_mixed_formats_share_sequences() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json(audio_message(pcm(1), 1, 1), 0.1)
    c.on_binary(encode_binary_frame(pcm(2), 2, 1), 0.2)
    assert c.result().sequence_ok and c.result().frames == 2


def test_stale_and_foreign_audio_dropped() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_binary(encode_binary_frame(pcm(1), 1, 2), 0.1)
    c.on_binary(encode_binary_frame(pcm(9), 2, 3), 0.2)  # another utterance: not ours
    c.on_json({"type": "utterance_end", "utterance_id": 2, "reason": "stopped"}, 0.3)
    c.on_binary(encode_binary_frame(pcm(9), 3, 2), 0.4)  # after its end: stale
    r = c.result()
    assert r.pcm == pcm(1) and r.end_reason == "stopped" and not r.ok
    assert r.sequence_ok  # the sequence counts every frame on the connection


def test_other_utterance_end_does_not_finish() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_binary(encode_binary_frame(pcm(1), 1, 2), 0.1)
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "interrupted"}, 0.2)
    assert not c.done


def test_bad_binary_frame_is_reported() -> None:
    c = AudioCollector(sent_at=0.0)
    assert c.on_binary(b"junk", 0.1) is None
    assert c.errors[0]["code"] == "CLIENT_BAD_FRAME" and not c.done


def test_non_fatal_error_is_collected_and_wait_goes_on() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "error", "code": "INVALID_CONFIG", "message": "no such voice"}, 0.1)
    assert not c.done
    c.on_binary(encode_binary_frame(pcm(1), 1, 1), 0.2)
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "completed"}, 0.3)
    r = c.result()
    assert r.frames == 1 and r.errors[0]["code"] == "INVALID_CONFIG" and not r.ok


@pytest.mark.parametrize("code", ["TEXT_TOO_LONG", "QUEUE_FULL"])
def test_refusing_error_ends_wait(code: str) -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "error", "code": code, "message": "x"}, 0.1)
    assert c.done
    r = c.result()
    assert r.frames == 0 and r.end_reason is None and r.errors[0]["code"] == code


def test_fatal_error_waits_for_the_session_end_reason() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "error", "code": "WORKER_UNAVAILABLE", "message": "no worker"}, 0.1)
    assert not c.done  # session_end follows a fatal error: its reason is reported too
    c.on_json({"type": "session_end", "session_id": "s", "reason": "error"}, 0.2)
    assert c.done
    assert c.result().problems() == ["error WORKER_UNAVAILABLE: no worker",
                                     "session ended: error"]


def test_probe_answer_is_not_an_error_and_a_refusal_ends_the_wait() -> None:
    accepted = AudioCollector()
    accepted.probing = True
    accepted.on_json({"type": "state", "state": "LISTENING"}, 0.1)
    accepted.on_json({"type": "error", "code": "INVALID_STATE", "message": "nothing"}, 0.2)
    assert not accepted.probing and not accepted.done and accepted.errors == []
    refused = AudioCollector()
    refused.probing = True
    refused.on_json({"type": "error", "code": "INVALID_CONFIG", "message": "no voice"}, 0.1)
    assert refused.done and refused.result().problems() == ["error INVALID_CONFIG: no voice"]
    # Once the check is over, INVALID_STATE is an error like any other.
    accepted.on_json({"type": "error", "code": "INVALID_STATE", "message": "again"}, 0.3)
    assert accepted.errors[0]["message"] == "again"


def test_session_end_ends_wait() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "session_end", "session_id": "s", "reason": "error"}, 0.5)
    assert c.done and c.result().session_end == {"type": "session_end", "session_id": "s",
                                                 "reason": "error"}


def test_closed_connection_is_reported() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_closed(1006, 0.5, "utterance_end")
    r = c.result()
    assert c.done and r.session_end == {"type": "closed", "close_code": 1006}
    assert r.problems() == ["the server closed the connection before utterance_end",
                            "connection closed (code 1006)"]


def test_give_up() -> None:
    c = AudioCollector(sent_at=0.0)
    c.give_up(30.0, "timeout")
    r = c.result()
    assert c.done and r.errors[0]["code"] == "CLIENT_TIMEOUT" and r.first_audio_ms is None


# -- messages and commands --------------------------------------------------------


def test_config_message_and_auth() -> None:
    assert config_message("", binary=False) is None
    assert config_message("v1", binary=True) == {"type": "config", "voice": "v1",
                                                 "output_format": "binary"}
    assert config_message("", binary=True) == {"type": "config", "output_format": "binary"}
    assert auth_headers("") == {}
    assert auth_headers("k") == {"Authorization": "Bearer k"}


# -- WAV --------------------------------------------------------------------------


def test_collected_audio_writes_a_wav(tmp_path: Path) -> None:
    c = AudioCollector(sent_at=0.0)
    for i in range(1, 6):
        c.on_binary(encode_binary_frame(pcm(i), i, 1), 0.1 * i)
    out = tmp_path / "utterance-1.wav"
    write_wav(out, c.result().pcm)
    with wave.open(str(out), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 48000)
        assert wav.getnframes() == 5 * 960
        assert wav.readframes(960) == pcm(1)


# -- converse over a scripted connection -------------------------------------------


Reply = Callable[[dict[str, Any]], list[Incoming]]


class ScriptedServer:
    """A fake connection: ``greeting`` is read first, then each message sent gets
    ``reply(message)``; after ``close_after_greeting`` every send fails, as aiohttp's
    does once the server has closed ("Cannot write to closing transport")."""

    def __init__(self, greeting: list[Incoming], reply: Reply | None = None,
                 close_after_greeting: bool = False) -> None:
        self.inbox: deque[Incoming] = deque(greeting)
        self.reply = reply or (lambda _: [])
        self.closed = close_after_greeting
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> bool:
        if self.closed:
            return False
        message = json.loads(text)
        self.sent.append(message)
        self.inbox.extend(self.reply(message))
        return True

    async def receive(self, timeout_s: float) -> Incoming | None:
        return self.inbox.popleft() if self.inbox else None  # None: the wait timed out

    async def say(self, text: str = "Hi", **kwargs: Any) -> SayResult:
        return await converse(self.send, self.receive, text, **kwargs)


def msg(**fields: Any) -> Incoming:
    return Incoming("text", json.dumps(fields))


START = msg(type="session_start", session_id="s1")
LISTENING = msg(type="state", state="LISTENING")


def speaks(voices: set[str]) -> Reply:
    """The orchestrator's answers (src/duplexvoice/orchestrator): a config naming an
    unknown voice is refused; PAUSE with nothing playing is INVALID_STATE; a text is
    spoken as two binary frames."""
    def reply(message: dict[str, Any]) -> list[Incoming]:
        voice = message.get("voice")
        if message["type"] == "config" and voice is not None and voice not in voices:
            return [msg(type="error", code="INVALID_CONFIG", message="voice not available")]
        if message == PROBE:
            return [msg(type="error", code="INVALID_STATE", message="nothing to pause")]
        if message["type"] == "text":
            return [msg(type="state", state="SPEAKING"),
                    Incoming("binary", encode_binary_frame(pcm(1), 1, 1)),
                    Incoming("binary", encode_binary_frame(pcm(2), 2, 1, FLAG_LAST)),
                    msg(type="utterance_end", utterance_id=1, reason="completed", frames=2),
                    msg(type="state", state="LISTENING")]
        return []
    return reply


async def test_refused_voice_stops_before_the_text_is_sent() -> None:
    server = ScriptedServer([START, LISTENING], speaks({"good"}))
    result = await server.say(voice="no-such-voice")
    assert [m["type"] for m in server.sent] == ["config", "control"]
    assert not result.text_sent and result.frames == 0 and not result.ok
    assert result.problems() == ["error INVALID_CONFIG: voice not available"]


async def test_accepted_voice_then_the_text() -> None:
    server = ScriptedServer([START, LISTENING], speaks({"good"}))
    played: list[bytes] = []
    result = await server.say(voice="good", on_audio=played.append)
    assert [m["type"] for m in server.sent] == ["config", "control", "text"]
    assert server.sent[0] == {"type": "config", "voice": "good", "output_format": "binary"}
    assert result.ok and result.errors == [] and played == [pcm(1), pcm(2)]


async def test_no_voice_no_probe() -> None:
    server = ScriptedServer([START], speaks(set()))
    result = await server.say()
    assert [m["type"] for m in server.sent] == ["config", "text"] and result.ok


async def test_server_closed_before_we_sent_shows_its_error_not_the_write_failure() -> None:
    """The server sent error + session_end and closed before our config went out."""
    server = ScriptedServer(
        [START, msg(type="error", code="WORKER_UNAVAILABLE", message="no TTS worker"),
         msg(type="session_end", session_id="s1", reason="error"),
         Incoming("closed", close_code=1011)],
        close_after_greeting=True,
    )
    result = await server.say()
    assert server.sent == [] and not result.text_sent and not result.ok
    assert result.problems() == ["error WORKER_UNAVAILABLE: no TTS worker",
                                 "session ended: error"]


async def test_closed_without_a_word() -> None:
    server = ScriptedServer([START, Incoming("closed", close_code=1006)],
                            close_after_greeting=True)
    result = await server.say()
    assert result.problems() == [
        "the server closed the connection before the answer to the config",
        "connection closed (code 1006)",
    ]


async def test_silent_server_times_out() -> None:
    server = ScriptedServer([START])  # answers nothing
    result = await server.say(timeout_s=2)
    assert not result.ok and result.errors[0]["code"] == "CLIENT_TIMEOUT"
    assert "waiting for utterance_end" in result.problems()[0]


def test_models_url() -> None:
    assert models_url("ws://127.0.0.1:8080/ws") == "http://127.0.0.1:8080/models"
    assert models_url("wss://example.org/ws?x=1") == "https://example.org/models"
