"""Pure helpers of the orchestrator's registries: no sockets, no event loop."""

from __future__ import annotations

import pytest

from duplexvoice.orchestrator.workers.registry import (
    parse_address,
    record_from_capabilities,
    retry_delay,
)
from duplexvoice.orchestrator.workers.router import WorkerInfo
from duplexvoice.rpc import tts_pb2

pytestmark = pytest.mark.unit


def reply(**metrics: float) -> tts_pb2.GetCapabilitiesResponse:
    return tts_pb2.GetCapabilitiesResponse(
        capabilities=tts_pb2.Capabilities(
            streaming=True, zero_shot=False, lora=True, cpu_ok=True,
            languages=["en-US", "de"], emotive_zero_prompt=False, max_concurrent_sessions=4,
        ),
        resident_models=["mock-en-us-tone"],
        metrics=metrics,
    )


def test_record_from_reply_matches_the_wire_record() -> None:
    rec = record_from_capabilities(
        "w0", "grpc://127.0.0.1:5000", reply(rtf=0.2, queue_depth=1.0, extra=3.0), now=100.0
    )
    assert rec["name"] == "w0"
    assert rec["addr"] == "grpc://127.0.0.1:5000"
    assert rec["capabilities"] == {
        "streaming": True, "zero_shot": False, "lora": True, "cpu_ok": True,
        "languages": ["en-US", "de"], "emotive_zero_prompt": False,
        "max_concurrent_sessions": 4,
    }
    assert rec["resident_models"] == ["mock-en-us-tone"]
    assert rec["metrics"] == {"rtf": 0.2, "queue_depth": 1.0, "extra": 3.0}
    assert rec["last_heartbeat_ts"] == 100.0
    info = WorkerInfo.from_record(rec, now=100.0, ttl_s=5.0)
    assert info is not None
    assert info.resident_models == frozenset({"mock-en-us-tone"})
    assert info.lora and info.cpu_ok and not info.zero_shot
    assert info.languages == ("en-US", "de")
    assert (info.rtf, info.queue_depth, info.max_concurrent_sessions) == (0.2, 1.0, 4)


def test_reply_without_metrics_is_still_a_valid_worker() -> None:
    rec = record_from_capabilities("w0", "grpc://h:1", reply(), now=1.0)
    assert rec["metrics"] == {"rtf": None, "queue_depth": 0.0}
    info = WorkerInfo.from_record(rec, now=1.0, ttl_s=5.0)
    assert info is not None and info.rtf is None and info.queue_depth == 0.0


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1:5000", "grpc://127.0.0.1:5000")),
        ("grpc://h:1", ("h:1", "grpc://h:1")),
        ("tts-0=h:1", ("tts-0", "grpc://h:1")),
        (" tts-0 = grpc://h:1 ", ("tts-0", "grpc://h:1")),
    ],
)
def test_parse_address(entry: str, expected: tuple[str, str]) -> None:
    assert parse_address(entry) == expected


@pytest.mark.parametrize("entry", ["", "name=", "hostonly", "grpc://"])
def test_parse_address_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_address(entry)


def test_retry_delay_backs_off_and_is_capped() -> None:
    assert retry_delay(0, 2.0) == 2.0
    delays = [retry_delay(n, 2.0) for n in range(1, 8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert retry_delay(10_000, 2.0) == 2.0
