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
DEADLINE_S = 60.0  # bounds a failure only


def pack(packs: Path, model_id: str) -> Any:
    return load_pack(packs / "cosyvoice" / model_id / "metadata.yaml", ["cosyvoice"])


@pytest.fixture(scope="module")
def adapter(cosy_packs: Path) -> Iterator[Any]:
    from duplexvoice.worker.adapters.cosyvoice import CosyVoiceAdapter

    voice = CosyVoiceAdapter.load(pack(cosy_packs, "cosyvoice-en-tiny"), "cpu")
    yield voice
    voice.close()


def first_chunk_need(adapter: Any) -> int:
    """Speech tokens the first chunk needs (the adapter's schedule: hop padded to the
    prompt, plus the flow's lookahead)."""
    hop = int(adapter.model.token_hop_len)
    prompt_len = int(adapter.prompt.speech_token.shape[1])
    pad = -prompt_len % hop
    return hop + pad + int(adapter.model.flow.pre_lookahead_len)


def backbone(adapter: Any) -> Any:
    """The LLM module called once per generation step (where the adapter's stop hook sits)."""
    return adapter.model.llm.llm.model


def live_request(adapter: Any) -> Any:
    (req,) = adapter._requests.values()
    return req


def test_streams_chunks_before_the_end(adapter: Any) -> None:
    from duplexvoice.worker.adapters import cosyvoice

    need = first_chunk_need(adapter)
    first_chunk = threading.Event()
    stalled: list[int] = []

    def gate(_module: Any, _args: Any) -> None:
        # Once the first chunk's tokens exist, hold the LLM until that chunk arrives: an
        # adapter that waited for the LLM's end would stall here and fail the test.
        req = cosyvoice._current.req
        held = not first_chunk.is_set() and len(req.tokens) >= need
        if held and not first_chunk.wait(DEADLINE_S):
            stalled.append(len(req.tokens))

    hook = backbone(adapter).register_forward_pre_hook(gate)
    seen: list[tuple[bool, int]] = []  # at each chunk: LLM done?, tokens so far
    chunks = []
    try:
        for chunk in adapter.stream(TEXT, SynthesisOptions(), threading.Event()):
            req = live_request(adapter)
            with req.cond:
                seen.append((req.done, len(req.tokens)))
            first_chunk.set()
            chunks.append(chunk)
    finally:
        hook.remove()
        first_chunk.set()
    assert not stalled, "the first chunk waited for the LLM to finish"
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1 and np.isfinite(chunk).all()
        assert np.abs(chunk).max() <= 1.0
    assert adapter.sample_rate == 24000
    final = len(req.tokens)
    assert req.done
    done_at_first, tokens_at_first = seen[0]
    assert not done_at_first and need <= tokens_at_first < final  # LLM still generating
    # the request's state is gone: its thread joined, no entry left anywhere
    assert req.thread is not None and not req.thread.is_alive()
    assert adapter._requests == {} and adapter.model.hift_cache_dict == {}


def test_prompt_features_computed_once(adapter: Any) -> None:
    runs = adapter.frontend.prompt_runs
    for _ in range(2):
        list(adapter.stream("Hi.", SynthesisOptions(), threading.Event()))
    assert runs == 1 and adapter.frontend.prompt_runs == 1
    assert adapter.prompt.speech_feat.shape[1] == 2 * adapter.prompt.speech_token.shape[1]
    assert adapter.prompt.embedding.shape == (1, 192)


def test_cancel_stops_and_nothing_grows(adapter: Any) -> None:
    threads_before = threading.active_count()
    requests = []
    for _ in range(6):
        cancel = threading.Event()
        stream = adapter.stream("Hello there, how are you doing today?", SynthesisOptions(), cancel)
        first = next(stream)
        assert first.size > 0
        requests.append(live_request(adapter))
        cancel.set()
        assert list(stream) == []  # stops at the next check, no more chunks
    # everything the adapter keeps per request is gone, every LLM thread joined
    assert adapter._requests == {}
    assert adapter.model.hift_cache_dict == {}
    assert all(req.stop.is_set() and not req.thread.is_alive() for req in requests)
    assert threading.active_count() == threads_before
    # and the voice is still usable
    after = list(adapter.stream("Hi.", SynthesisOptions(), threading.Event()))
    assert sum(c.size for c in after) > 0
    assert adapter._requests == {}


def test_close_of_a_stream_stops_the_llm_at_the_next_step(adapter: Any) -> None:
    """The stop is checked before every LLM step, also steps that yield no token (fill
    tokens): closing a stream waits for the step in flight, not for the LLM's max_len."""
    import torch

    from duplexvoice.worker.adapters import cosyvoice

    llm = adapter.model.llm
    size = int(llm.speech_token_size)
    need = first_chunk_need(adapter)

    def sampling(logp: Any, decoded: list[int], *_a: Any, **_k: Any) -> Any:
        if len(decoded) >= need:  # after the first chunk's tokens: fill tokens, no yield
            return torch.tensor([size + 1])
        return logp[:size].argmax().reshape(1)

    late: list[int] = []  # steps that started after the request was stopped

    def hold(_module: Any, _args: Any) -> None:
        req = cosyvoice._current.req
        if req.stop.is_set():
            late.append(len(req.tokens))
        elif len(req.tokens) >= need:
            req.stop.wait(DEADLINE_S)  # this step is in flight when the stop comes

    original = llm.sampling
    llm.sampling = sampling
    hook = backbone(adapter).register_forward_pre_hook(hold)
    try:
        stream = adapter.stream(TEXT, SynthesisOptions(), threading.Event())
        assert next(stream).size > 0
        req = live_request(adapter)
        stream.close()  # what the worker does on STOP
    finally:
        hook.remove()
        llm.sampling = original
    assert not req.thread.is_alive() and req.error is None
    assert late == []  # no step began after the stop
    assert adapter._requests == {} and adapter.model.hift_cache_dict == {}


def test_two_sessions_at_once(adapter: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two streams overlap (each yields a chunk before either ends) and each gets what
    it gets alone. Greedy sampling makes the speech tokens deterministic and the flow's
    noise is a fixed buffer, so the tokens and the mel of every chunk must match
    exactly; HiFT's source draws from torch's global RNG (random phase and noise), so
    the audio samples differ from run to run and only their lengths are compared."""
    model = adapter.model
    size = int(model.llm.speech_token_size)  # greedy over speech tokens: never EOS
    monkeypatch.setattr(
        model.llm, "sampling", lambda logp, *_a, **_k: logp[:size].argmax().reshape(1)
    )
    calls: dict[str, list[tuple[list[int], int, bool]]] = {}
    mels: dict[str, list[np.ndarray]] = {}
    token2wav, hift = model.token2wav, model.hift.inference

    def spy_token2wav(**kwargs: Any) -> Any:
        name = threading.current_thread().name
        call = (kwargs["token"].reshape(-1).tolist(), kwargs["token_offset"], kwargs["finalize"])
        calls.setdefault(name, []).append(call)
        return token2wav(**kwargs)

    def spy_hift(**kwargs: Any) -> Any:
        mels.setdefault(threading.current_thread().name, []).append(
            kwargs["speech_feat"].detach().float().cpu().numpy().copy()
        )
        return hift(**kwargs)

    monkeypatch.setattr(model, "token2wav", spy_token2wav)
    monkeypatch.setattr(model.hift, "inference", spy_hift)
    texts = {"A": "Hi there.", "B": "Hello there, friend."}

    def run_all(names: list[str], barrier: threading.Barrier | None) -> dict[str, int]:
        sizes: dict[str, int] = {}
        errors: list[BaseException] = []

        def run(name: str) -> None:
            try:
                total = 0
                for i, chunk in enumerate(
                    adapter.stream(texts[name], SynthesisOptions(), threading.Event())
                ):
                    total += chunk.size
                    if i == 0 and barrier is not None:
                        barrier.wait(DEADLINE_S)  # the other stream has a chunk too
                sizes[name] = total
            except BaseException as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(n,), name=n) for n in names]
        for w in workers:
            w.start()
            if barrier is None:
                w.join(DEADLINE_S)  # alone: one after the other
        for w in workers:
            w.join(DEADLINE_S)
            assert not w.is_alive(), f"stream {w.name} not done within {DEADLINE_S} s"
        if errors:
            raise errors[0]
        return sizes

    alone = run_all(["A", "B"], None)
    alone_calls, alone_mels = dict(calls), dict(mels)
    calls.clear()
    mels.clear()
    together = run_all(["A", "B"], threading.Barrier(2))
    assert together == alone and alone["A"] != alone["B"]
    for name in ("A", "B"):
        assert len(alone_calls[name]) >= 2  # streamed: at least one chunk before the last
        assert calls[name] == alone_calls[name]  # same tokens, same chunk schedule
        assert len(mels[name]) == len(alone_mels[name])
        for got, want in zip(mels[name], alone_mels[name], strict=True):
            np.testing.assert_array_equal(got, want)
    assert adapter._requests == {} and model.hift_cache_dict == {}


def test_close_frees_the_model_and_later_streams_fail_clearly(
    cosy_packs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    import torch

    from duplexvoice.worker.adapters.cosyvoice import CosyVoiceAdapter

    voice = CosyVoiceAdapter.load(pack(cosy_packs, "cosyvoice-en-second"), "cpu")
    assert sum(c.size for c in voice.stream("Hi.", SynthesisOptions(), threading.Event())) > 0
    refs = [weakref.ref(voice.model), weakref.ref(voice.model.llm), weakref.ref(voice.frontend)]
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    voice.device = torch.device("cuda")  # as loaded on a GPU: the cache goes back too
    voice.close()
    assert [ref() for ref in refs] == [None, None, None]  # collected, not just unreferenced
    assert emptied == [True]
    voice.close()  # idempotent
    assert emptied == [True]
    with pytest.raises(AdapterError, match="voice is closed"):
        next(voice.stream("Hi.", SynthesisOptions(), threading.Event()))


def test_speed_renders_one_chunk(adapter: Any) -> None:
    normal = sum(c.size for c in adapter.stream("Hi.", SynthesisOptions(), threading.Event()))
    fast = list(adapter.stream("Hi.", SynthesisOptions(speed=2.0), threading.Event()))
    assert len(fast) == 1 and 0 < fast[0].size < normal


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("cosyvoice-en-missing", "is missing campplus.onnx"),
        ("cosyvoice-en-wrong", "flow.pt does not match the yaml"),
        (
            "cosyvoice-en-narrow",
            r"the flow encoder's output_size is 256, .* hard-codes 512 channels",
        ),
    ],
)
def test_bad_checkpoints_fail_clearly(cosy_packs: Path, model_id: str, message: str) -> None:
    from duplexvoice.worker.adapters.cosyvoice import CosyVoiceAdapter

    with pytest.raises(AdapterError, match=message) as info:
        CosyVoiceAdapter.load(pack(cosy_packs, model_id), "cpu")
    assert "\n" not in str(info.value)
