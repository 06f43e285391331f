"""Everything one worker process holds: voice catalog, model manager, sessions,
synthesis threads, registry publisher, metrics. The gRPC servicer is a thin layer
over this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from duplexvoice import __version__
from duplexvoice.audio import FRAME_MS, SAMPLE_RATE
from duplexvoice.threads import call_at_low_priority, lower_thread_priority
from duplexvoice.worker.adapters import ADAPTERS
from duplexvoice.worker.adapters.base import TTSAdapter
from duplexvoice.worker.config import WorkerConfig
from duplexvoice.worker.model_manager import ModelManager, ModelNotLoadedError, UnknownModelError
from duplexvoice.worker.registry import RegistryPublisher, build_record
from duplexvoice.worker.session import SynthesisSession
from duplexvoice.worker.voice import LoadedVoice
from duplexvoice.worker.voicepacks import ScanResult, VoicePack, scan_voicepacks

log = logging.getLogger(__name__)

_FAL_ALPHA = 0.1


class WorkerRuntime:
    def __init__(
        self, config: WorkerConfig, *, adapters: Mapping[str, type[TTSAdapter]] = ADAPTERS
    ) -> None:
        """``adapters``: the TTS families voice packs may use (tests add a fake one)."""
        self.config = config
        self.adapters = adapters
        self.catalog: dict[str, VoicePack] = {}
        self.scan_errors: list[str] = []
        self.rescan()
        self.models: ModelManager[LoadedVoice] = ModelManager(
            config.models,
            load=self._load_voice,
            unload=lambda _model_id, voice: voice.close(),
            known_models=lambda: self.catalog.keys(),
            on_change=self.notify_changed,
            base_of=self.base_of,
        )
        self.sessions: dict[str, SynthesisSession] = {}
        self.executor = ThreadPoolExecutor(
            config.synthesis_threads,
            thread_name_prefix="synth",
            initializer=lower_thread_priority,
            initargs=(config.synthesis_niceness,),
        )
        self.chunking = config.chunking()
        self.accepting = True
        self.port = 0
        self.started_at = time.monotonic()
        self.frames_sent = 0
        self.utterances = 0
        self.stream_errors = 0
        self.first_audio_ms = 0.0
        self.publisher: RegistryPublisher | None = None
        self._reaper: asyncio.Task[None] | None = None

    # -- voices ---------------------------------------------------------------------

    def rescan(self) -> ScanResult:
        """(Re)discover voice packs; models already loaded keep running."""
        result = scan_voicepacks(self.config.voicepack_dirs, self.adapters)
        self.catalog = result.packs
        self.scan_errors = result.errors
        return result

    def base_of(self, model_id: str) -> str | None:
        """The base model of a LoRA voice (None for a model), checked against the catalog:
        the base must be a voice pack of the same family that is not itself a LoRA voice.
        """
        pack = self.catalog.get(model_id)
        if pack is None or pack.metadata.base_model is None:
            return None
        base_id = pack.metadata.base_model
        base = self.catalog.get(base_id)
        if base is None:
            raise UnknownModelError(
                f"LoRA voice {model_id!r}: no voice pack for its base {base_id!r}"
            )
        if base.family != pack.family or base.metadata.base_model is not None:
            raise UnknownModelError(
                f"LoRA voice {model_id!r}: its base {base_id!r} must be a {pack.family} model, "
                "not a LoRA voice nor another family"
            )
        return base_id

    def _load_voice(self, model_id: str) -> LoadedVoice:
        pack = self.catalog[model_id]
        models = self.config.models
        warmup = models.warmup_text if models.warmup_enabled else None
        start = time.perf_counter()
        base_id = self.base_of(model_id)

        def load() -> LoadedVoice:
            if base_id is None:
                return LoadedVoice.load(pack, self.config.device, warmup, self.adapters)
            base = self.models.get(base_id)
            if base is None:  # the manager keeps the base resident while this loads
                raise ModelNotLoadedError(f"base model {base_id!r} is not resident")
            return LoadedVoice.load_lora(pack, base)

        voice = call_at_low_priority(load, self.config.synthesis_niceness)
        log.info(
            "loaded %s in %.0f ms (warm-up %.0f ms, gain %+.1f dB)",
            model_id, (time.perf_counter() - start) * 1000, voice.warmup_ms,
            voice.loudness.gain_db,
        )
        return voice

    def notify_changed(self) -> None:
        """Models or sessions changed: refresh the registry record now."""
        if self.publisher is not None:
            self.publisher.poke()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.models.start()
        self._reaper = asyncio.create_task(self._reap_idle_sessions())

    async def start_registry(self) -> None:
        if self.config.redis_url:
            self.publisher = RegistryPublisher(
                self.config.redis_url,
                self.config.name,
                self.record,
                key_prefix=self.config.registry_key_prefix,
                ttl_s=self.config.registry_ttl_s,
                interval_s=self.config.heartbeat_interval_s,
            )
            await self.publisher.start()

    async def stop_registry(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
            self.publisher = None

    def stop_all_streams(self) -> None:
        for session in self.sessions.values():
            session.stop()

    async def close(self) -> None:
        self.accepting = False
        if self._reaper is not None:
            self._reaper.cancel()
        self.stop_all_streams()
        for session_id in list(self.sessions):
            self.end_session(session_id)
        await self.stop_registry()
        await self.models.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- sessions -------------------------------------------------------------------

    def end_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.stop()
        self.models.release(session.model_id)
        self.notify_changed()
        return True

    async def _reap_idle_sessions(self) -> None:
        # A client that vanished without EndSession must not hold a model forever.
        timeout = self.config.session_idle_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 2, 30.0))
            now = time.monotonic()
            for session_id, session in list(self.sessions.items()):
                if session.utterance is None and now - session.last_active > timeout:
                    log.info("session %s idle for %.0f s: ended", session_id, timeout)
                    self.end_session(session_id)

    def record_first_audio(self, ms: float) -> None:
        if self.utterances <= 1:
            self.first_audio_ms = ms
        else:
            self.first_audio_ms += _FAL_ALPHA * (ms - self.first_audio_ms)

    # -- what we report -------------------------------------------------------------

    def capabilities(self) -> dict[str, object]:
        packs = list(self.catalog.values())
        caps = [p.metadata.capabilities for p in packs]
        languages = sorted({lang for p in packs for lang in p.metadata.languages})
        return {
            "streaming": all(c.streaming for c in caps) if caps else True,
            "zero_shot": any(c.zero_shot for c in caps),
            "lora": any(c.lora for c in caps),
            "cpu_ok": any(c.cpu_ok for c in caps),
            "languages": languages,
            "emotive_zero_prompt": any(c.emotive_zero_prompt for c in caps),
            "max_concurrent_sessions": self.config.max_sessions,
        }

    def rtf(self) -> float:
        meters = [v.rtf for m in self.models.resident_models() if (v := self.models.get(m))]
        measured = [m.value for m in meters if m.samples]
        return max(measured) if measured else 0.0

    def metrics(self) -> Mapping[str, float]:
        return {
            "rtf": round(self.rtf(), 4),
            "queue_depth": float(len(self.sessions)),
            "active_streams": float(sum(1 for s in self.sessions.values() if s.utterance)),
            "first_audio_ms": round(self.first_audio_ms, 2),
            "utterances": float(self.utterances),
            "frames_sent": float(self.frames_sent),
            "stream_errors": float(self.stream_errors),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }

    def record(self) -> dict[str, object]:
        """This worker's registry record (WIRE §3), current as of now."""
        return build_record(
            name=self.config.name,
            addr=self.config.advertised_addr(self.port),
            capabilities=self.capabilities(),
            resident_models=self.models.resident_models(),
            metrics=self.metrics(),
            now=time.time(),
            extra={
                "available_models": sorted(self.catalog),
                "model_bases": {
                    m: p.metadata.base_model
                    for m, p in sorted(self.catalog.items())
                    if p.metadata.base_model is not None
                },
                "audio": {"sr": SAMPLE_RATE, "frame_ms": FRAME_MS},
                "hardware": {"device": self.config.device},
                "version": __version__,
            },
        )
