"""XttsAdapter in-process on the tiny checkpoint: streaming, cached conditioning,
STOP, concurrency, languages, built-in speakers, bad packs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("TTS", reason="XTTS needs coqui-tts: run `make worker-env FAMILY=xtts`")

from duplexvoice.worker.adapters.base import AdapterError, SynthesisOptions
from duplexvoice.worker.voicepacks import VoicePack, load_pack
from tests.families.xtts.conftest import FAST

pytestmark = pytest.mark.integration

TEXT_A = "hello, this is a warm-up."
TEXT_B = "the quick brown fox jumps over the lazy dog, numbers like one two three."
DEADLINE_S = 60.0


def make_pack(root: Path, model_id: str, checkpoint: Path, **params: Any) -> VoicePack:
    from tests.support.tiny.xtts import write_pack

    folder = write_pack(root, model_id, checkpoint, **{**FAST, **params})
    return load_pack(folder / "metadata.yaml", ["xtts"])


def speak(adapter: Any, text: str, options: SynthesisOptions | None = None) -> np.ndarray:
    chunks = list(adapter.stream(text, options or SynthesisOptions(), threading.Event()))
    return np.concatenate(chunks)


def in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` on a thread; fail (instead of hanging) if it outlives the deadline."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"not done within {DEADLINE_S:.0f} s (deadlock?)"
    if errors:
        raise errors[0]
    return result[0]


class Counter:
    """Counts calls of a wrapped function."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)

    def method(self) -> Callable[..., Any]:
        """A plain function (binds as a method when set on a class)."""

        def call(*args: Any, **kwargs: Any) -> Any:
            return self(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def loaded(xtts_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One adapter for the module, loaded with counting spies on the conditioning code."""
    from TTS.tts.models.xtts import Xtts

    from duplexvoice.worker.adapters.xtts import XttsAdapter

    pack = make_pack(tmp_path_factory.mktemp("packs"), "xtts-en-us-tiny", xtts_checkpoint)
    with pytest.MonkeyPatch.context() as patch:
        latents = Counter(Xtts.get_gpt_cond_latents)
        speaker = Counter(Xtts.get_speaker_embedding)
        patch.setattr(Xtts, "get_gpt_cond_latents", latents.method())
        patch.setattr(Xtts, "get_speaker_embedding", speaker.method())
        adapter = XttsAdapter.load(pack, "cpu")
    adapter.load_counts = (latents.calls, speaker.calls)
    adapter.pack = pack
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def solo(loaded: Any) -> dict[str, np.ndarray]:
    """Each test text spoken alone (deterministic: top_k 1)."""
    return {text: speak(loaded, text) for text in (TEXT_A, TEXT_B)}


def test_chunks_stream_before_the_generation_ends(loaded: Any) -> None:
    steps = 0

    def count(*_: Any) -> None:
        nonlocal steps
        steps += 1

    hook = loaded.model.gpt.gpt_inference.register_forward_hook(count)
    try:
        seen_at: list[int] = []
        chunks = []
        for chunk in loaded.stream(TEXT_A, SynthesisOptions(), threading.Event()):
            seen_at.append(steps)
            chunks.append(chunk)
    finally:
        hook.remove()
    assert loaded.sample_rate == 24000
    assert len(chunks) >= 3
    # The first chunk came after ~stream_chunk_size GPT steps, long before the last one.
    assert seen_at[0] <= FAST["stream_chunk_size"] + 1 < steps
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1 and chunk.size > 0
        assert np.all(np.abs(chunk) <= 1.0)
    assert sum(c.size for c in chunks) / loaded.sample_rate > 0.5


def test_conditioning_is_computed_once_at_load(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert loaded.load_counts == (1, 1)  # one clip: one speaker vector, one GPT latent
    latents = Counter(loaded.model.get_gpt_cond_latents)
    speaker = Counter(loaded.model.get_speaker_embedding)
    monkeypatch.setattr(loaded.model, "get_gpt_cond_latents", latents)
    monkeypatch.setattr(loaded.model, "get_speaker_embedding", speaker)
    speak(loaded, TEXT_A, SynthesisOptions(speed=1.2))
    assert (latents.calls, speaker.calls) == (0, 0)


def test_several_reference_clips_make_one_voice(loaded: Any) -> None:
    import torch

    from duplexvoice.worker.adapters.xtts_files import reference_conditioning
    from tests.support.tiny.xtts import reference_clip, write_wav

    pack = loaded.pack
    write_wav(pack.root / "ref" / "low.wav", reference_clip(f0=90.0), rate=16000)
    both = reference_conditioning(
        pack, loaded.model, ["ref/seed.wav", "ref/low.wav"], torch.device("cpu")
    )
    one = loaded.conditioning
    assert both.gpt_cond_latent.shape == one.gpt_cond_latent.shape
    assert both.speaker_embedding.shape == one.speaker_embedding.shape
    assert not torch.equal(both.speaker_embedding, one.speaker_embedding)


def test_stop_closes_the_generation_and_the_model_stays_usable(
    loaded: Any, solo: dict[str, np.ndarray]
) -> None:
    threads_before = threading.active_count()
    steps = 0

    def count(*_: Any) -> None:
        nonlocal steps
        steps += 1

    hook = loaded.model.gpt.gpt_inference.register_forward_hook(count)
    try:
        cancel = threading.Event()
        stream = loaded.stream(TEXT_B, SynthesisOptions(), cancel)
        first = next(stream)
        cancel.set()
        assert next(stream, None) is None  # ends at the next chunk boundary
        at_stop = steps
        # Abandoned mid-utterance (the worker drops a stream on STOP): closed at once.
        dropped = loaded.stream(TEXT_A, SynthesisOptions(), threading.Event())
        next(dropped)
        dropped.close()
        after_close = steps
        again = in_thread(lambda: speak(loaded, TEXT_B))
    finally:
        hook.remove()
    assert first.size > 0
    assert at_stop <= FAST["stream_chunk_size"] + 1  # no chunk generated after the cancel
    assert after_close - at_stop <= FAST["stream_chunk_size"] + 1
    assert threading.active_count() == threads_before  # coqui streams without a thread
    np.testing.assert_array_equal(again, solo[TEXT_B])


def test_interleaved_sessions_each_get_what_they_get_alone(
    loaded: Any, solo: dict[str, np.ndarray]
) -> None:
    # Strict alternation on one thread, chunk by chunk: the worst interleaving.
    a = loaded.stream(TEXT_A, SynthesisOptions(), threading.Event())
    b = loaded.stream(TEXT_B, SynthesisOptions(), threading.Event())
    got: dict[str, list[np.ndarray]] = {TEXT_A: [], TEXT_B: []}
    live = {TEXT_A: a, TEXT_B: b}
    while live:
        for text, stream in list(live.items()):
            chunk = next(stream, None)
            if chunk is None:
                del live[text]
            else:
                got[text].append(chunk)
    for text in (TEXT_A, TEXT_B):
        np.testing.assert_array_equal(np.concatenate(got[text]), solo[text])


def test_concurrent_threads_each_get_what_they_get_alone(
    loaded: Any, solo: dict[str, np.ndarray]
) -> None:
    results: dict[str, np.ndarray] = {}
    start = threading.Barrier(2)

    def run(text: str) -> None:
        start.wait(DEADLINE_S)
        results[text] = speak(loaded, text)

    threads = [threading.Thread(target=run, args=(t,)) for t in (TEXT_A, TEXT_B)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
        assert not thread.is_alive()
    for text in (TEXT_A, TEXT_B):
        np.testing.assert_array_equal(results[text], solo[text])


def test_coqui_unguarded_interleaving_mixes_sessions(
    loaded: Any, solo: dict[str, np.ndarray]
) -> None:
    """Why the adapter restores the prefix: coqui's own generators, interleaved, hear
    each other's text (the GPT keeps one prefix embedding per model)."""
    model, cond = loaded.model, loaded.conditioning
    settings = {**loaded._sampling, "stream_chunk_size": FAST["stream_chunk_size"]}

    def raw(text: str) -> Iterator[Any]:
        return iter(model.inference_stream(
            text, "en", cond.gpt_cond_latent, cond.speaker_embedding, **settings
        ))

    streams = {TEXT_A: raw(TEXT_A), TEXT_B: raw(TEXT_B)}
    got: dict[str, list[np.ndarray]] = {TEXT_A: [], TEXT_B: []}
    try:
        while streams:
            for text, stream in list(streams.items()):
                chunk = next(stream, None)
                if chunk is None:
                    del streams[text]
                else:
                    got[text].append(chunk.numpy().clip(-1, 1))
    except IndexError:
        return  # B's prefix length put A's audio positions out of range: clobbered
    mixed = [
        text for text in (TEXT_A, TEXT_B)
        if not np.array_equal(np.concatenate(got[text]).astype(np.float32), solo[text])
    ]
    assert mixed, "coqui no longer shares the prefix: the per-model lock may be relaxed"


def test_session_language_overrides_the_pack(loaded: Any) -> None:
    german = speak(loaded, "guten tag, wie geht es dir heute?", SynthesisOptions(
        extra={"language": "de"}
    ))
    assert german.size > 0
    with pytest.raises(AdapterError, match="language 'fr' is not supported"):
        speak(loaded, TEXT_A, SynthesisOptions(extra={"language": "fr"}))


def test_builtin_speaker_from_speakers_file(loaded: Any) -> None:
    import torch

    from duplexvoice.worker.adapters.xtts import XttsAdapter
    from duplexvoice.worker.adapters.xtts_files import builtin_speaker
    from tests.support.tiny.xtts import SPEAKER

    cpu = torch.device("cpu")
    voice = builtin_speaker(loaded.pack, loaded.model, SPEAKER, cpu)
    adapter = XttsAdapter(loaded.model, voice, loaded.capabilities, loaded.params)
    assert speak(adapter, TEXT_A).size > 0
    with pytest.raises(AdapterError, match="no built-in speaker 'Nobody'"):
        builtin_speaker(loaded.pack, loaded.model, "Nobody", cpu)


def test_bad_params_and_missing_voice_fail_before_loading(
    xtts_checkpoint: Path, tmp_path: Path
) -> None:
    from duplexvoice.worker.adapters.xtts import XttsAdapter

    cases = [
        ({"stream_chunk_sise": 4}, "stream_chunk_sise: Extra inputs are not permitted"),
        ({"dtype": "float16"}, "dtype float16 is not supported for XTTS"),
        ({"reference": ["ref/none.wav"]}, "no reference clip"),
        ({"reference": ["ref/seed.wav"], "speaker": "x"}, "pick one"),
    ]
    for i, (params, message) in enumerate(cases):
        pack = make_pack(tmp_path, f"xtts-en-us-bad{i}", xtts_checkpoint, **params)
        with pytest.raises(AdapterError, match=message):
            XttsAdapter.load(pack, "cpu")


def test_text_too_long_is_a_clear_error(loaded: Any) -> None:
    with pytest.raises(AdapterError, match="XTTS takes fewer than"):
        speak(loaded, "word " * 500)


def test_legacy_checkpoint_with_a_pickled_config_loads_the_same(
    legacy_checkpoint: Path, tmp_path: Path, solo: dict[str, np.ndarray]
) -> None:
    """coqui converts such a model.pth in place on its first load (documented)."""
    import torch

    from duplexvoice.worker.adapters.xtts import XttsAdapter

    pack = make_pack(tmp_path, "xtts-en-us-legacy", legacy_checkpoint)
    adapter = XttsAdapter.load(pack, "cpu")
    np.testing.assert_array_equal(speak(adapter, TEXT_A), solo[TEXT_A])
    converted = torch.load(legacy_checkpoint / "model.pth", weights_only=True)
    assert isinstance(converted["config"], dict)


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds; fail after DEADLINE_S (bounds a failure only)."""
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S:.0f} s: {what}"
        pause.wait(0.01)


def record_chunks(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Names of the threads whose chunks coqui computes, in compute order (each
    ``next`` of coqui's generator runs under the adapter's lock)."""
    order: list[str] = []
    inference_stream = loaded.model.inference_stream

    def spy(*args: Any, **kwargs: Any) -> Iterator[Any]:
        chunks = inference_stream(*args, **kwargs)
        try:
            while True:
                order.append(threading.current_thread().name)
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                yield chunk
        finally:
            chunks.close()

    monkeypatch.setattr(loaded.model, "inference_stream", spy)
    return order


def test_waiting_sessions_take_turns_in_order(
    loaded: Any, solo: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIFO: B queued while A waits; once A has computed a chunk, B computes before A's
    next one (a plain Lock lets the releasing stream take it straight back)."""
    order = record_chunks(loaded, monkeypatch)
    lock = loaded._lock
    results: dict[str, np.ndarray] = {}

    def run(text: str) -> None:
        results[threading.current_thread().name] = speak(loaded, text)

    lock.acquire(lambda: False)  # the test holds the model: both sessions queue
    mine = lock._next_ticket - 1  # tickets after the test's are the sessions'
    threads = [
        threading.Thread(target=run, args=(text,), name=name, daemon=True)
        for name, text in (("A", TEXT_A), ("B", TEXT_B))
    ]
    try:
        for queued, thread in enumerate(threads, start=2):
            thread.start()
            wait_for(lambda q=queued: lock._next_ticket == mine + q, f"{thread.name} queued")
    finally:
        lock.release()
    for thread in threads:
        thread.join(DEADLINE_S)
        assert not thread.is_alive(), f"{thread.name} not done within {DEADLINE_S:.0f} s"
    assert order[:2] == ["A", "B"]  # FIFO; and B ran before A's second chunk
    assert order.count("A") >= 3 and order.count("B") >= 3
    np.testing.assert_array_equal(results["A"], solo[TEXT_A])
    np.testing.assert_array_equal(results["B"], solo[TEXT_B])


def test_stop_while_waiting_for_the_model_computes_nothing(
    loaded: Any, solo: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    order = record_chunks(loaded, monkeypatch)
    lock = loaded._lock
    cancel = threading.Event()
    got: list[list[np.ndarray]] = []
    lock.acquire(lambda: False)  # another session computing: this one must wait
    mine = lock._next_ticket - 1
    try:
        waiter = threading.Thread(
            target=lambda: got.append(list(loaded.stream(TEXT_A, SynthesisOptions(), cancel))),
            name="stopped",
            daemon=True,
        )
        waiter.start()
        wait_for(lambda: lock._next_ticket == mine + 2, "the session queued")
        cancel.set()  # STOP while queued: leaves without the lock
        waiter.join(DEADLINE_S)
        assert not waiter.is_alive(), "a stopped session waited for the lock"
    finally:
        lock.release()
    assert got == [[]] and order == []  # no chunk computed, none yielded
    # a stream cancelled before it starts does not queue at all
    cancel_first = threading.Event()
    cancel_first.set()
    assert list(loaded.stream(TEXT_A, SynthesisOptions(), cancel_first)) == []
    assert order == []
    # the abandoned ticket is skipped: the model still serves
    np.testing.assert_array_equal(in_thread(lambda: speak(loaded, TEXT_A)), solo[TEXT_A])


def test_close_frees_the_model_and_later_streams_fail_clearly(
    xtts_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    import torch

    from duplexvoice.worker.adapters.xtts import XttsAdapter

    adapter = XttsAdapter.load(make_pack(tmp_path, "xtts-en-us-close", xtts_checkpoint), "cpu")
    assert speak(adapter, TEXT_A).size > 0
    assert adapter.conditioning is not None
    refs = [
        weakref.ref(adapter.model),
        weakref.ref(adapter.model.gpt),
        weakref.ref(adapter.conditioning.gpt_cond_latent),
    ]
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    adapter.device = torch.device("cuda")  # as loaded on a GPU: the cache goes back too
    adapter.close()
    assert [ref() for ref in refs] == [None, None, None]  # collected, not just unreferenced
    assert emptied == [True]
    adapter.close()  # idempotent
    assert emptied == [True]
    with pytest.raises(AdapterError, match="voice is closed"):
        speak(adapter, TEXT_A)
