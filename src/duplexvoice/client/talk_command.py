"""``duplexvoice talk`` as a command: which microphone and speaker (sound card,
``--input`` / ``--out`` WAV files, or the hidden ``--simulate-echo`` room around
them), whether an echo canceller runs (only where sound can leak from the speaker
into the microphone, and not with ``--no-aec``), one-line errors and the exit code
(0 ok, 1 error, 130 Ctrl-C). The session itself is :class:`~.talk.TalkClient`.

Problems found before connecting (a missing or bad input file, an unwritable
``--out``, bad options) cost no session. Without PortAudio ``import sounddevice``
fails: with ``--input`` the replies' audio is then discarded (or written to
``--out``), and without it the command stops, naming the Debian package.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from duplexvoice.client.audio_io import (
    FileMicrophone,
    InputError,
    LoopbackDevice,
    Microphone,
    NullSpeaker,
    Speaker,
    WavSpeaker,
)
from duplexvoice.client.echo_cancel import AecUnavailable, make_echo_canceller
from duplexvoice.client.paths import out_path_error
from duplexvoice.client.talk import TalkClient, TalkError, TalkOptions
from duplexvoice.client.ws_client import ConnectFailed

if TYPE_CHECKING:
    import argparse




def _echo_setting(value: str) -> tuple[float, float]:
    """``--simulate-echo GAIN_DB:DELAY_MS`` (hidden, for tests and demos); ValueError
    with a message for a bad one."""
    gain, _, delay = value.partition(":")
    try:
        gain_db, delay_ms = float(gain), float(delay or 50)
    except ValueError:
        raise ValueError(f"--simulate-echo wants GAIN_DB:DELAY_MS, got {value!r}") from None
    if not (-60.0 <= gain_db <= 20.0 and 20.0 <= delay_ms <= 1000.0):
        raise ValueError("--simulate-echo: gain -60..20 dB, delay 20..1000 ms")
    return gain_db, delay_ms


async def _devices(args: argparse.Namespace, note: Callable[[str], None]
                   ) -> tuple[Microphone, Speaker, bool]:
    """The microphone, the speaker, and whether sound can leak from one to the other."""
    from duplexvoice.client.sound_card import (
        SoundCardMicrophone,
        SoundCardSpeaker,
        SoundCardUnavailable,
        open_sounddevice,
    )

    sd = None
    card_problem = ""
    if args.input is None or args.out is None:
        try:
            sd = open_sounddevice()
        except SoundCardUnavailable as exc:
            card_problem = str(exc)
    microphone: Microphone
    if args.input is not None:
        microphone = FileMicrophone(args.input)
    elif sd is None:
        raise TalkError(f"{card_problem}; or use --input FILE.wav")
    else:
        try:
            microphone = SoundCardMicrophone(sd)
        except SoundCardUnavailable as exc:
            raise TalkError(f"{exc}; or use --input FILE.wav") from None
    speaker: Speaker
    try:
        if args.out is not None:
            speaker = WavSpeaker(args.out)
        elif sd is None:
            note(f"{card_problem}: the replies' audio is discarded (--out FILE.wav keeps it)")
            speaker = NullSpeaker()
        else:
            try:
                speaker = SoundCardSpeaker(sd)
            except SoundCardUnavailable as exc:
                note(f"{exc}: the replies' audio is discarded (--out FILE.wav keeps it)")
                speaker = NullSpeaker()
    except BaseException:
        microphone.close()
        raise
    acoustic = isinstance(microphone, SoundCardMicrophone) and isinstance(
        speaker, SoundCardSpeaker)
    return microphone, speaker, acoustic


async def _talk(args: argparse.Namespace) -> int:
    def note(text: str) -> None:
        print(f"duplexvoice talk: {text}", file=sys.stderr, flush=True)

    try:
        microphone, speaker, acoustic = await _devices(args, note)
    except (TalkError, InputError) as exc:
        note(str(exc))
        return 1
    try:
        if args.simulate_echo:
            gain_db, delay_ms = _echo_setting(args.simulate_echo)
            room = LoopbackDevice(microphone, speaker, gain_db=gain_db, delay_ms=delay_ms)
            microphone, speaker, acoustic = room.microphone, room.speaker, True
        mic_latency = float(getattr(microphone, "latency_ms", 0.0))
        try:
            echo = make_echo_canceller(acoustic and not args.no_aec,
                                       round(mic_latency + speaker.latency_ms))
        except AecUnavailable as exc:
            note(f"{exc}; going on without it (expect the system to hear itself "
                 "through the speaker: use headphones)")
            echo = make_echo_canceller(False)
        options = TalkOptions(url=args.url, api_key=args.api_key, voice=args.voice,
                              reply=args.reply, say=args.say, linger_s=args.linger)

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        client = TalkClient(options, microphone, speaker, echo, write=write,
                            tty=sys.stdout.isatty())
        try:
            result = await client.run()
        except ConnectFailed as exc:
            note(str(exc))
            return 1
        except InputError as exc:  # the file broke while playing
            note(f"--input: {exc}")
            return 1
        if result.problem:
            note(result.problem)
        return result.code
    finally:
        microphone.close()
        speaker.close()


def run_talk(args: argparse.Namespace) -> int:
    """``duplexvoice talk``: the exit code (0 ok, 1 error, 130 Ctrl-C)."""
    if not args.linger >= 0:  # also NaN
        print("duplexvoice talk: --linger must be >= 0", file=sys.stderr)
        return 1
    if args.simulate_echo:
        try:
            _echo_setting(args.simulate_echo)
        except ValueError as exc:
            print(f"duplexvoice talk: {exc}", file=sys.stderr)
            return 1
    if args.out is not None and (problem := out_path_error(args.out)) is not None:
        print(f"duplexvoice talk: --out: {problem}", file=sys.stderr)
        return 1
    if args.input is not None:
        # Checked before connecting: a typo should not cost a session.
        try:
            FileMicrophone(args.input).close()
        except InputError as exc:
            print(f"duplexvoice talk: --input: {exc}", file=sys.stderr)
            return 1
    try:
        return asyncio.run(_talk(args))
    except KeyboardInterrupt:
        print("duplexvoice talk: interrupted", file=sys.stderr)
        return 130


__all__ = ["run_talk"]
