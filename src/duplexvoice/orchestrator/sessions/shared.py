"""What all conversation sessions share: one recognizer, one acoustic end-of-turn model,
one reply engine per name, the VAD settings. Built once at start from ``conversation``
(each core gets its own section of the config as it is: no settings are copied here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from duplexvoice.orchestrator.conversation_config import ConversationConfig
from duplexvoice.orchestrator.sessions.turn_end import EndMode
from duplexvoice.replies import ReplyConfig, ReplyEngine, make_engine
from duplexvoice.speech.asr import Transcriber
from duplexvoice.speech.endturn import EndTurnModelMissing, EndTurnScorer
from duplexvoice.speech.vad import VadConfig

log = logging.getLogger(__name__)


@dataclass
class ConversationServices:
    """The recognizer loads in the background from the start: the first turn waits for
    it only if it comes within the first second or so."""

    config: ConversationConfig
    transcriber: Transcriber
    replies: dict[str, ReplyEngine]
    # The acoustic end-of-turn model; None: not used (turns.end_mode) or not installed.
    endturn: EndTurnScorer | None = None

    @property
    def vad(self) -> VadConfig:
        return self.config.vad

    async def close(self) -> None:
        for engine in self.replies.values():
            await engine.close()
        await asyncio.to_thread(self.transcriber.close)
        if self.endturn is not None:
            await asyncio.to_thread(self.endturn.close)


def make_replies(config: ReplyConfig) -> dict[str, ReplyEngine]:
    """The configured engine, and echo (a session may ask for it) with the same settings."""
    replies = {"echo": make_engine(config.model_copy(update={"engine": "echo"}))}
    if config.engine != "echo":
        replies[config.engine] = make_engine(config)
    return replies


async def make_services(config: ConversationConfig) -> ConversationServices:
    """The shared parts of conversation mode. Raises ``ValueError`` for settings that
    cannot work (a model directory that does not exist)."""
    transcriber = await asyncio.to_thread(Transcriber, config.asr)
    endturn = await make_endturn(config)
    if endturn is None and config.turns.uses_acoustic:
        # No model: "fused" is the text rule alone; "acoustic" the silence alone.
        mode: EndMode = "text" if config.turns.end_mode == "fused" else "silence"
        config = config.model_copy(update={
            "turns": dataclasses.replace(config.turns, end_mode=mode)})
    return ConversationServices(config, transcriber, make_replies(config.reply), endturn)


async def make_endturn(config: ConversationConfig) -> EndTurnScorer | None:
    """The end-of-turn model when turn-taking asks for it. Not installed: a warning, and
    turns end on the text and the silence (an explicit ``model_path`` that is missing
    is a ``ValueError``: a typo must not pass unnoticed)."""
    if not config.turns.uses_acoustic:
        return None
    try:
        return await asyncio.to_thread(EndTurnScorer, config.endturn)
    except EndTurnModelMissing as exc:
        if config.endturn.model_path:
            raise ValueError(str(exc)) from exc
        log.warning("end of turn without the acoustic model: %s", exc)
        return None
