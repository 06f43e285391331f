"""The CosyVoice 2 adapter in-process on a tiny random-weight checkpoint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "cosyvoice",
    reason="the cosyvoice family is not installed: run `make worker-env FAMILY=cosyvoice`",
)

from duplexvoice.worker.adapters.base import AdapterError, SynthesisOptions
from duplexvoice.worker.voicepacks import load_pack

pytestmark = [
    pytest.mark.integration,
    # the package's own code: diffusers' LoRACompatibleLinear, torch.cuda.amp.autocast
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TEXT = "Hello there."  # random weights never stop early: 20 tokens per text token


def pack(packs: Path, model_id: str) -> Any:
    return load_pack(packs / "cosyvoice" / model_id / "metadata.yaml", ["cosyvoice"])


@pytest.fixture(scope="module")
def adapter(cosy_packs: Path) -> Iterator[Any]:
    from duplexvoice.worker.adapters.cosyvoice import CosyVoiceAdapter

    voice = CosyVoiceAdapter.load(pack(cosy_packs, "cosyvoice-en-tiny"), "cpu")
    yield voice
    voice.close()


def test_streams_chunks_before_the_end(adapter: Any) -> None:
    seen: list[tuple[int, bool]] = []
    llm_done: list[bool] = []
    chunks = []
    for chunk in adapter.stream(TEXT, SynthesisOptions(), threading.Event()):
        chunks.append(chunk)
        seen.append((chunk.size, adapter.model.hift_cache_dict != {}))
        llm_done.append(threading.active_count())
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1 and np.isfinite(chunk).all()
        assert np.abs(chunk).max() <= 1.0
    assert adapter.sample_rate == 24000
    # chunks came while the request was still live (its state registered)
    assert all(live for _, live in seen)
    assert adapter.model.hift_cache_dict == {}


def test_prompt_features_computed_once(adapter: Any) -> None:
    runs = adapter.frontend.prompt_runs
    for _ in range(2):
        list(adapter.stream("Hi.", SynthesisOptions(), threading.Event()))
    assert runs == 1 and adapter.frontend.prompt_runs == 1
    assert adapter.prompt.speech_feat.shape[1] == 2 * adapter.prompt.speech_token.shape[1]
    assert adapter.prompt.embedding.shape == (1, 192)


def test_cancel_stops_and_nothing_grows(adapter: Any) -> None:
    threads_before = threading.active_count()
    for _ in range(6):
        cancel = threading.Event()
        stream = adapter.stream("Hello there, how are you doing today?", SynthesisOptions(), cancel)
        first = next(stream)
        assert first.size > 0
        cancel.set()
        assert list(stream) == []  # stops at the next check, no more chunks
    model = adapter.model
    assert model.hift_cache_dict == {}
    assert model.tts_speech_token_dict == {} and model.llm_end_dict == {}
    assert threading.active_count() == threads_before  # every LLM thread joined
    # and the voice is still usable
    after = list(adapter.stream("Hi.", SynthesisOptions(), threading.Event()))
    assert sum(c.size for c in after) > 0


def test_two_sessions_at_once(adapter: Any) -> None:
    # Greedy sampling: the token streams, hence the lengths, are deterministic.
    llm = adapter.model.llm
    original = llm.sampling
    size = int(llm.speech_token_size)  # greedy over speech tokens: never EOS, no retry loop
    llm.sampling = lambda logp, *_a, **_k: logp[:size].argmax().reshape(1)
    try:
        texts = ["Hi.", "Hello there."]
        alone = [
            sum(c.size for c in adapter.stream(t, SynthesisOptions(), threading.Event()))
            for t in texts
        ]
        results: dict[int, int] = {}
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                results[i] = sum(
                    c.size for c in adapter.stream(texts[i], SynthesisOptions(), threading.Event())
                )
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not errors and [results[0], results[1]] == alone
        assert alone[0] != alone[1]
    finally:
        llm.sampling = original
    assert adapter.model.hift_cache_dict == {}


def test_speed_renders_one_chunk(adapter: Any) -> None:
    normal = sum(c.size for c in adapter.stream("Hi.", SynthesisOptions(), threading.Event()))
    fast = list(adapter.stream("Hi.", SynthesisOptions(speed=2.0), threading.Event()))
    assert len(fast) == 1 and 0 < fast[0].size < normal


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("cosyvoice-en-missing", "is missing campplus.onnx"),
        ("cosyvoice-en-wrong", "flow.pt does not match the yaml"),
    ],
)
def test_bad_checkpoints_fail_clearly(cosy_packs: Path, model_id: str, message: str) -> None:
    from duplexvoice.worker.adapters.cosyvoice import CosyVoiceAdapter

    with pytest.raises(AdapterError, match=message) as info:
        CosyVoiceAdapter.load(pack(cosy_packs, model_id), "cpu")
    assert "\n" not in str(info.value)
