"""TTS adapters against the repository's voice packs, with the real engines.

Piper and eSpeak run for real here (that is the point: the adapters are thin, the
engines are what can surprise). The mock is checked for what tests elsewhere rely
on: determinism, speech-like timing and its failure knobs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime  # type: ignore[import-untyped, unused-ignore]
import pytest

from duplexvoice.worker.adapters import (
    ADAPTERS,
    TORCH_FAMILIES,
    AdapterError,
    FamilyNotInstalledError,
    adapter_for,
    capabilities_from_pack,
    family_installed,
)
from duplexvoice.worker.adapters.base import FloatAudio, SynthesisOptions, TTSAdapter
from duplexvoice.worker.adapters.mock import CHUNK_MS
from duplexvoice.worker.adapters.piper import PiperAdapter, providers_for
from duplexvoice.worker.voicepacks import VoicePack, scan_voicepacks

pytestmark = pytest.mark.unit

REPO_PACKS = Path(__file__).resolve().parents[2] / "voicepacks"
PACK_IDS = {
    "mock": "mock-en-us-tone",
    "piper": "piper-en-us-joe-medium",
    "espeak": "espeak-en-us-default",
}
FAMILIES = sorted(PACK_IDS)
FOX = "The quick brown fox jumps over the lazy dog."  # 9 words
THREE = "Thanks for calling. I can help you with that. Is there anything else?"


@pytest.fixture(scope="module")
def packs() -> dict[str, VoicePack]:
    result = scan_voicepacks([REPO_PACKS], ADAPTERS)
    assert result.errors == []
    return result.packs


@pytest.fixture(scope="module")
def adapters(packs: dict[str, VoicePack]) -> Iterator[dict[str, TTSAdapter]]:
    loaded = {
        family: adapter_for(family).load(packs[mid], "cpu") for family, mid in PACK_IDS.items()
    }
    yield loaded
    for adapter in loaded.values():
        adapter.close()


def chunks_of(
    adapter: TTSAdapter, text: str, speed: float = 1.0, cancel: threading.Event | None = None
) -> list[FloatAudio]:
    return list(adapter.stream(text, SynthesisOptions(speed=speed), cancel or threading.Event()))


def synth(adapter: TTSAdapter, text: str, speed: float = 1.0) -> FloatAudio:
    return np.concatenate(chunks_of(adapter, text, speed))


def assert_speech_like(audio: FloatAudio, sample_rate: int, words: int) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.all(np.abs(audio) <= 1.0)
    assert float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) > 0.01
    seconds = audio.size / sample_rate
    # Between 75 and 400 words a minute, allowing for leading and trailing silence.
    assert 0.15 * words <= seconds <= 0.8 * words, seconds


def write_pack(folder: Path, family: str, model_id: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.yaml").write_text(
        f"model_id: {model_id}\nname: test\nfamily: {family}\nversion: '1'\n"
        f"languages: [en]\n{extra}",
        encoding="utf-8",
    )
    return folder


def load_one(root: Path) -> VoicePack:
    result = scan_voicepacks([root], ADAPTERS)
    assert result.errors == []
    (pack,) = result.packs.values()
    return pack


# --- registry -------------------------------------------------------------------


def test_registry_names_each_family_by_its_class() -> None:
    installed = [name for name in ADAPTERS if family_installed(name)]
    assert {"mock", "piper", "espeak"} <= set(installed)
    assert {name: ADAPTERS[name].family for name in installed} == {n: n for n in installed}


def test_a_family_whose_packages_are_missing_names_the_command_that_installs_it() -> None:
    missing = [name for name in TORCH_FAMILIES if not family_installed(name)]
    if not missing:
        pytest.skip("every torch family is installed in this environment")
    with pytest.raises(FamilyNotInstalledError) as err:
        adapter_for(missing[0])
    message = str(err.value)
    assert f"make worker-env FAMILY={missing[0]}" in message
    assert "\n" not in message


def test_unknown_family_is_a_clear_adapter_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"'nope'.*espeak, mock, piper"):
        adapter_for("nope")
    write_pack(tmp_path / "x" / "nope-en-x", "nope", "nope-en-x")
    errors = scan_voicepacks([tmp_path], ADAPTERS).errors
    assert len(errors) == 1 and "unknown family 'nope'" in errors[0]


def test_capabilities_come_from_the_pack(packs: dict[str, VoicePack]) -> None:
    pack = packs[PACK_IDS["piper"]]
    caps = capabilities_from_pack(pack)
    assert caps.languages == ("en", "en-US")
    assert caps.cpu_ok and caps.streaming and not caps.zero_shot


# --- every family ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_speaks_a_sentence(
    family: str, adapters: dict[str, TTSAdapter], packs: dict[str, VoicePack]
) -> None:
    adapter = adapters[family]
    assert adapter.sample_rate == packs[PACK_IDS[family]].metadata.audio["sample_rate"]
    assert_speech_like(synth(adapter, FOX), adapter.sample_rate, words=9)


@pytest.mark.parametrize("family", FAMILIES)
def test_speed_changes_duration(family: str, adapters: dict[str, TTSAdapter]) -> None:
    adapter = adapters[family]
    slow, normal, fast = (synth(adapter, FOX, speed).size for speed in (0.7, 1.0, 1.5))
    assert slow > normal * 1.15 and fast < normal * 0.85, (slow, normal, fast)


@pytest.mark.parametrize("family", FAMILIES)
def test_cancel_stops_the_stream(family: str, adapters: dict[str, TTSAdapter]) -> None:
    adapter = adapters[family]
    full = len(chunks_of(adapter, THREE))
    assert full > 1
    cancel = threading.Event()
    got = 0
    for _ in adapter.stream(THREE, SynthesisOptions(), cancel):
        got += 1
        cancel.set()
    assert got == 1
    cancel_before = threading.Event()
    cancel_before.set()
    assert chunks_of(adapter, THREE, cancel=cancel_before) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_text_gives_no_audio(family: str, adapters: dict[str, TTSAdapter]) -> None:
    assert sum(c.size for c in chunks_of(adapters[family], "  ")) == 0


# --- piper ----------------------------------------------------------------------


def test_piper_streams_one_chunk_per_sentence(adapters: dict[str, TTSAdapter]) -> None:
    chunks = chunks_of(adapters["piper"], THREE)
    assert len(chunks) == 3
    for chunk in chunks:
        assert_speech_like(chunk, adapters["piper"].sample_rate, words=4)


def test_piper_voice_dropped_into_a_folder_speaks(
    tmp_path: Path, packs: dict[str, VoicePack]
) -> None:
    joe = packs[PACK_IDS["piper"]]
    model, config = joe.file("model"), joe.file("config")
    assert model is not None and config is not None
    folder = write_pack(tmp_path / "piper" / "piper-en-us-dropped", "piper", "piper-en-us-dropped")
    (folder / "voice.onnx").symlink_to(model)
    (folder / "voice.onnx.json").symlink_to(config)
    adapter = PiperAdapter.load(load_one(tmp_path), "cpu")
    assert adapter.sample_rate == 22050
    assert_speech_like(synth(adapter, FOX), adapter.sample_rate, words=9)


def test_piper_folder_without_a_usable_model_is_a_clear_error(
    tmp_path: Path, packs: dict[str, VoicePack]
) -> None:
    folder = write_pack(tmp_path / "p" / "piper-en-us-empty", "piper", "piper-en-us-empty")
    with pytest.raises(AdapterError, match=r"piper-en-us-empty.*no \*\.onnx"):
        PiperAdapter.load(load_one(tmp_path), "cpu")
    model = packs[PACK_IDS["piper"]].file("model")
    assert model is not None
    (folder / "a.onnx").symlink_to(model)
    with pytest.raises(AdapterError, match=r"a\.onnx\.json"):
        PiperAdapter.load(load_one(tmp_path), "cpu")
    (folder / "b.onnx").symlink_to(model)
    with pytest.raises(AdapterError, match=r"several \*\.onnx.*a\.onnx, b\.onnx"):
        PiperAdapter.load(load_one(tmp_path), "cpu")


def test_pack_pointing_at_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    files = "files:\n  model: missing.onnx\n  config: missing.onnx.json\n"
    folder = write_pack(tmp_path / "p" / "piper-en-us-gone", "piper", "piper-en-us-gone", files)
    errors = scan_voicepacks([tmp_path], ADAPTERS).errors
    assert len(errors) == 1 and "files.model" in errors[0] and "missing.onnx" in errors[0]
    # A file that disappears after the scan is reported by the adapter at load time.
    (folder / "missing.onnx").write_bytes(b"")
    (folder / "missing.onnx.json").write_text("{}", encoding="utf-8")
    pack = load_one(tmp_path)
    (folder / "missing.onnx").unlink()
    with pytest.raises(AdapterError, match=r"piper-en-us-gone.*missing\.onnx"):
        PiperAdapter.load(pack, "cpu")


def test_piper_bad_params_and_devices_are_clear_errors(
    packs: dict[str, VoicePack], monkeypatch: pytest.MonkeyPatch
) -> None:
    joe = packs[PACK_IDS["piper"]]
    typo = joe.metadata.model_copy(update={"params": {"intra_op_thread": 1}})
    with pytest.raises(AdapterError, match=r"params: intra_op_thread"):
        PiperAdapter.load(VoicePack(typo, joe.root), "cpu")
    with pytest.raises(AdapterError, match=r"unknown device 'tpu'"):
        PiperAdapter.load(joe, "tpu")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(AdapterError, match=r"no CUDAExecutionProvider"):
            PiperAdapter.load(joe, "cuda")
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert providers_for("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}),
        "CPUExecutionProvider",
    ]
    assert providers_for("cuda")[0] == (
        "CUDAExecutionProvider",
        {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"},
    )
    assert providers_for("cpu") == ["CPUExecutionProvider"]


# --- espeak ---------------------------------------------------------------------


def test_espeak_streams_small_chunks(adapters: dict[str, TTSAdapter]) -> None:
    chunks = chunks_of(adapters["espeak"], FOX)
    assert len(chunks) > 10
    assert max(c.size for c in chunks) <= adapters["espeak"].sample_rate // 10


def test_espeak_unknown_voice_is_a_clear_error(packs: dict[str, VoicePack]) -> None:
    pack = packs[PACK_IDS["espeak"]]
    meta = pack.metadata.model_copy(update={"params": {"voice": "xx-nowhere"}})
    with pytest.raises(AdapterError, match=r"espeak-en-us-default.*unknown voice 'xx-nowhere'"):
        adapter_for("espeak").load(VoicePack(meta, pack.root), "cpu")
    # A failed load leaves the shared engine working for the packs that did load.
    assert_speech_like(synth(adapter_for("espeak").load(pack, "cpu"), FOX), 22050, words=9)


def test_espeak_and_piper_at_once_from_several_threads(adapters: dict[str, TTSAdapter]) -> None:
    # piper's bundled espeak-ng (phonemes) and libespeak-ng (the espeak family) are
    # two copies in one process: both must keep working side by side.
    reference = {family: synth(adapters[family], FOX).size for family in ("piper", "espeak")}
    results: dict[str, list[int]] = {"piper": [], "espeak": [], "piper2": []}
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def work(key: str, family: str, runs: int) -> None:
        try:
            start.wait()
            for _ in range(runs):
                audio = synth(adapters[family], FOX)
                assert_speech_like(audio, adapters[family].sample_rate, words=9)
                results[key].append(audio.size)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=("piper", "piper", 3)),
        threading.Thread(target=work, args=("piper2", "piper", 3)),
        threading.Thread(target=work, args=("espeak", "espeak", 40)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    # Piper samples noise each run and eSpeak varies slightly: lengths, not samples.
    for key, sizes in results.items():
        ref = reference[key.rstrip("2")]
        assert sizes and all(abs(size - ref) < 0.2 * ref for size in sizes), (key, sizes, ref)


# --- mock -----------------------------------------------------------------------


def test_mock_is_deterministic_and_chunked(adapters: dict[str, TTSAdapter]) -> None:
    mock = adapters["mock"]
    first, second = chunks_of(mock, FOX), chunks_of(mock, FOX)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    chunk = mock.sample_rate * CHUNK_MS // 1000
    assert all(c.size == chunk for c in first[:-1]) and 0 < first[-1].size <= chunk
    assert not np.array_equal(synth(mock, "Hello there."), synth(mock, "Hello where."))


def test_mock_sounds_like_words_with_pauses(adapters: dict[str, TTSAdapter]) -> None:
    mock = adapters["mock"]
    audio = synth(mock, "One two, three. Four five six.")
    frame = mock.sample_rate // 100
    rms = np.sqrt(np.mean(audio[: audio.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    silent = rms < 1e-4
    assert 0.1 < silent.mean() < 0.6  # words separated by pauses
    # Voiced: the strongest frequency is a plausible speaking pitch.
    spectrum = np.abs(np.fft.rfft(audio[~np.repeat(silent, frame)]))
    peak_hz = np.argmax(spectrum) * mock.sample_rate / (2 * (spectrum.size - 1))
    assert 70 < peak_hz < 250
    # A period takes longer than a word gap; the same words without it are shorter.
    assert synth(mock, "One two three four five six").size < audio.size


def test_mock_failure_knobs(adapters: dict[str, TTSAdapter]) -> None:
    mock = adapters["mock"]
    stream = mock.stream(f"{FOX} [[fail]]", SynthesisOptions(), threading.Event())
    with pytest.raises(AdapterError, match="fail"):
        next(iter(stream))
    got: list[FloatAudio] = []
    with pytest.raises(AdapterError, match="after 3 chunks"):
        got.extend(mock.stream(f"[[fail-after:3]] {FOX}", SynthesisOptions(), threading.Event()))
    assert len(got) == 3
    # Markers are not spoken.
    assert np.array_equal(synth(mock, f"{FOX} [[slow:1]]"), synth(mock, FOX))


def test_mock_slow_knob_returns_once_cancelled(adapters: dict[str, TTSAdapter]) -> None:
    cancel = threading.Event()
    got: list[FloatAudio] = []
    worker = threading.Thread(
        target=lambda: got.extend(
            adapters["mock"].stream(f"[[slow:60000]] {FOX}", SynthesisOptions(), cancel)
        )
    )
    worker.start()
    cancel.set()
    worker.join(timeout=30)  # a guard only: without cancel it would take an hour
    assert not worker.is_alive() and got == []


def test_only_the_mock_runs_on_the_event_loop(adapters: dict[str, TTSAdapter]) -> None:
    # Model inference always goes to a synthesis thread; the mock is cheaper than the
    # hop, except when a test asks it to be slow (that blocks, on purpose).
    assert adapters["mock"].runs_inline("Hello there.")
    assert not adapters["mock"].runs_inline("Hello [[slow:200]] there.")
    assert not adapters["piper"].runs_inline("Hello there.")
    assert not adapters["espeak"].runs_inline("Hello there.")


@pytest.mark.parametrize(("rate", "speed"), [(24000, 1.0), (22050, 0.7), (16000, 8.0)])
def test_mock_render_is_independent_of_chunking(rate: int, speed: float) -> None:
    # Chunks are cut anywhere (mid-word, mid-taper); at speed 8 words are shorter than
    # their two 10 ms tapers together.
    from itertools import pairwise

    from duplexvoice.worker.adapters.mock import plan_words, render

    words, total = plan_words(f"{THREE} {FOX}", rate, 60.0, speed, 120.0)
    whole = render(words, 0, total, rate)
    assert whole.dtype == np.float32 and whole.size == total
    assert 0.05 < float(np.sqrt(np.mean(whole**2))) < 0.2 and float(np.abs(whole).max()) <= 0.5
    rng = np.random.default_rng(rate)
    for _ in range(5):
        cuts = [0, *sorted(rng.integers(0, total, 2).tolist()), total]
        pieces = [render(words, a, b, rate) for a, b in pairwise(cuts)]
        assert np.array_equal(np.concatenate(pieces), whole)
    # Tapered: every word starts from silence.
    assert all(whole[word.start] == 0.0 for word in words)


def test_knowing_a_family_imports_nothing() -> None:
    import sys

    before = set(sys.modules)
    assert "csm" in ADAPTERS and "cosyvoice" in ADAPTERS and "nope" not in ADAPTERS
    assert not {m for m in set(sys.modules) - before if m.startswith("duplexvoice.worker")}
