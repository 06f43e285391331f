"""duplexvoice: one entry point with subcommands.

  duplexvoice worker          run a TTS worker (gRPC, default port 7001)
  duplexvoice orchestrator    run the orchestrator (HTTP + WebSocket, default port 8080)
  duplexvoice brain           run the local language model (OpenAI API, default port 8090)
  duplexvoice up              one worker and the orchestrator, supervised (port 8080)
  duplexvoice say "text"      speak through the orchestrator (-i: interactive)
  duplexvoice talk            conversation: microphone (or --input WAV) and speaker
  duplexvoice synth "text"    speak through a running worker into a WAV file
  duplexvoice bench           run every benchmark of the checkout's bench/ folder

Each subcommand has its own --help.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from duplexvoice.client.paths import out_path_error
from duplexvoice.config import (
    ConfigError,
    HelpFormatter,
    OptionError,
    add_flags,
    load_config_with_origins,
    one_line,
)
from duplexvoice.wire.ports import bind_error, in_use_message

ServiceConfig = TypeVar("ServiceConfig", bound=BaseModel)


def _run_service(
    name: str,
    model: type[ServiceConfig],
    env_prefix: str,
    serve: Callable[[ServiceConfig], Coroutine[object, object, None]],
    args: argparse.Namespace,
) -> int:
    """Load a service's config (YAML < env < flags), set up logging, serve until stopped.

    Problems a user can fix are one line on stderr naming the option and where its
    value came from, never a traceback.
    """
    try:
        config, origins = load_config_with_origins(model, yaml_path=args.config,
                                                   env_prefix=env_prefix, flags=args)
    except ConfigError as exc:
        print(f"duplexvoice {name}: {exc}", file=sys.stderr)
        return 2
    host, port = getattr(config, "host", ""), getattr(config, "port", 0)
    if port and (error := bind_error(host, port)) is not None:
        print(f"duplexvoice {name}: {origins.label('port')}: "
              f"{in_use_message(host, port, error)}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=getattr(config, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(config))
    except OptionError as exc:
        print(f"duplexvoice {name}: {origins.label(exc.option)}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"duplexvoice {name}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before serve() took over SIGINT
        return 130
    return 0


def _worker(args: argparse.Namespace) -> int:
    from duplexvoice.worker.config import ENV_PREFIX, WorkerConfig
    from duplexvoice.worker.server import serve

    return _run_service("worker", WorkerConfig, ENV_PREFIX, serve, args)


def _orchestrator(args: argparse.Namespace) -> int:
    from duplexvoice.orchestrator.config import ENV_PREFIX, OrchestratorConfig
    from duplexvoice.orchestrator.server import serve

    return _run_service("orchestrator", OrchestratorConfig, ENV_PREFIX, serve, args)


def _brain(args: argparse.Namespace) -> int:
    from duplexvoice.brain.config import ENV_PREFIX, BrainConfig
    from duplexvoice.brain.server import serve

    return _run_service("brain", BrainConfig, ENV_PREFIX, serve, args)


def _synth(args: argparse.Namespace) -> int:
    import grpc

    from duplexvoice.client.worker_client import WorkerClient, synthesize_text, write_wav

    if (problem := out_path_error(args.out)) is not None:
        print(f"duplexvoice synth: --out: {problem}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with WorkerClient(args.worker) as client:
            try:
                await client.wait_ready(args.timeout)
                result = await synthesize_text(client, args.text, args.voice,
                                               {"speed": str(args.speed)})
            except TimeoutError:
                print(f"duplexvoice synth: no worker answers at {args.worker}",
                      file=sys.stderr)
                return 1
            except grpc.aio.AioRpcError as exc:
                print(f"duplexvoice synth: worker error {exc.code().name}: {exc.details()}",
                      file=sys.stderr)
                return 1
        try:
            write_wav(args.out, result.pcm)
        except OSError as exc:  # e.g. the disk filled up meanwhile
            print(f"duplexvoice synth: --out: cannot write {args.out}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        print(
            f"wrote {args.out} ({result.audio_ms / 1000:.2f} s of audio); "
            f"first audio after {result.first_audio_ms or 0:.0f} ms, "
            f"done after {result.total_ms:.0f} ms"
        )
        return 0

    return asyncio.run(run())


def _say(args: argparse.Namespace) -> int:
    import json

    from duplexvoice.client.console import Player, find_player
    from duplexvoice.client.interactive import interactive
    from duplexvoice.client.worker_client import write_wav
    from duplexvoice.client.ws_client import ConnectFailed, say

    async def run() -> int:
        command = None if args.out is not None else find_player()
        player = await Player(command).start() if command else None
        finished = False  # False on the way out of Ctrl-C: stop the player at once
        try:
            result = await say(args.url, args.text, voice=args.voice, api_key=args.api_key,
                               binary=not args.json_audio, timeout_s=args.timeout,
                               on_audio=player.write if player else None)
            finished = True
        except ConnectFailed as exc:
            print(f"duplexvoice say: {exc}", file=sys.stderr)
            return 1
        finally:
            if player is not None:
                await player.close(abort=not finished)
        if command is not None:
            where = f"played with {Path(command[0]).name}"
        elif result.pcm:
            out = args.out or Path("out.wav")
            write_wav(out, result.pcm)
            where = f"wrote {out}"
        else:
            where = "no audio"
        problems = result.problems()
        if args.json:
            print(json.dumps({**result.summary(), "audio": where}))
        else:
            for line in problems:
                print(line, file=sys.stderr)
            if result.frames or not problems:  # else the server's error says it all
                first = ("-" if result.first_audio_ms is None
                         else f"{result.first_audio_ms:.0f} ms")
                print(
                    f"{where} ({result.audio_ms / 1000:.2f} s of audio, {result.frames} frames"
                    f"{'' if result.sequence_ok else ', SEQUENCE GAPS'}); first audio after "
                    f"{first}; utterance_end: {result.end_reason or 'none'}"
                )
        return 0 if result.ok else 1

    try:
        if args.interactive or not args.text:
            return asyncio.run(interactive(args.url, voice=args.voice, api_key=args.api_key,
                                           out_dir=args.out, timeout_s=args.timeout))
        return asyncio.run(run())
    except KeyboardInterrupt:  # Ctrl-C: the session was closed on the way out
        print("duplexvoice say: interrupted", file=sys.stderr)
        return 130


def _talk(args: argparse.Namespace) -> int:
    from duplexvoice.client.talk_command import run_talk

    return run_talk(args)


def _up(args: argparse.Namespace) -> int:
    from duplexvoice.up import run_up
    from duplexvoice.up_config import UpError, plan_from_args

    try:
        plan = plan_from_args(args)
    except UpError as exc:
        print(f"duplexvoice up: {exc}", file=sys.stderr)
        return exc.code
    logging.basicConfig(level=plan.orchestrator.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_up(plan)


BENCHMARKS = ("worker", "orchestrator", "conversation", "browser", "brain")  # bench/<name>.py


def _bench(args: argparse.Namespace) -> int:
    # The benchmarks live in the source checkout (they start services and compare
    # against bare models), not in the installed package.
    folder = Path(__file__).resolve().parents[2] / "bench"
    if not folder.is_dir():
        print(f"duplexvoice bench: no bench/ folder at {folder}: run it from a source "
              "checkout (pip install -e .)", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"duplexvoice bench: unknown benchmark(s) {', '.join(unknown)} "
              f"(known: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        cmd = [sys.executable, str(folder / f"{name}.py")] + (["--quick"] if args.quick else [])
        failed += subprocess.run(cmd, check=False).returncode != 0
    return 1 if failed else 0


def _service(sub: Any, name: str, model: type[BaseModel],
             func: Callable[[argparse.Namespace], int], help: str, description: str) -> None:
    """A service's subcommand: its YAML file (``--config``) and every option of its
    config model as a flag."""
    parser = sub.add_parser(name, help=help, description=description,
                            formatter_class=HelpFormatter)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"YAML file (e.g. configs/{name}.yaml)")
    add_flags(parser, model)
    parser.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from duplexvoice.brain.config import BrainConfig
    from duplexvoice.orchestrator.config import OrchestratorConfig
    from duplexvoice.up_config import add_up_flags
    from duplexvoice.worker.config import WorkerConfig

    parser = argparse.ArgumentParser(prog="duplexvoice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _service(sub, "worker", WorkerConfig, _worker, "run a TTS worker (gRPC)",
             "Run a TTS worker: the gRPC TTS service (WIRE §2).")
    _service(sub, "orchestrator", OrchestratorConfig, _orchestrator,
             "run the orchestrator (HTTP + WebSocket)",
             "Run the orchestrator: WebSocket sessions, /health /ready /metrics /models, "
             "routing over TTS workers (a list of addresses, or Redis).")
    _service(sub, "brain", BrainConfig, _brain,
             "run the local language model (OpenAI-compatible HTTP API)",
             "Run a local language model (a GGUF file; default: the packaged "
             "SmolLM2-135M-Instruct) behind OpenAI's chat-completions API, streamed: "
             "POST /v1/chat/completions, GET /v1/models, GET /health. It is the "
             "orchestrator's default reply engine (--reply-engine local, at "
             "--reply-local-url http://HOST:PORT/v1); `up` starts it.")

    synth = sub.add_parser("synth", help="speak text through a running worker into a WAV",
                           description="Speak text through a running worker's gRPC API "
                           "(no orchestrator) into a WAV file; prints the first-audio latency.")
    synth.add_argument("text", help="what to say")
    synth.add_argument("--worker", default="127.0.0.1:7001", metavar="HOST:PORT",
                       help="worker address (default: 127.0.0.1:7001)")
    synth.add_argument("--voice", default="", metavar="ID",
                       help="model id (default: the worker's default)")
    synth.add_argument("--speed", type=float, default=1.0, metavar="FACTOR",
                       help="speaking rate, 0.25 to 4 (default: 1)")
    synth.add_argument("--out", type=Path, default=Path("out.wav"), metavar="FILE",
                       help="the WAV file to write (default: out.wav)")
    synth.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="seconds to wait for the worker (default: 10)")
    synth.set_defaults(func=_synth)

    say = sub.add_parser("say", help="speak text through the orchestrator (WebSocket)",
                         description="Speak text through a running orchestrator. Audio plays "
                         "on the sound card when one is found, else goes to a WAV. Without "
                         "text (or with -i): an interactive session.")
    say.add_argument("text", nargs="?", default="",
                     help="what to say (none: an interactive session)")
    say.add_argument("-i", "--interactive", action="store_true",
                     help="type lines to speak; /pause /resume /stop /voice [ID] /quit; "
                     "at the end of input (Ctrl-D, a pipe) what was sent is spoken first")
    say.add_argument("--url", default="ws://127.0.0.1:8080/ws", metavar="URL",
                     help="orchestrator WebSocket (default: ws://127.0.0.1:8080/ws)")
    say.add_argument("--voice", default="", metavar="ID",
                     help="model id (default: the server's default)")
    say.add_argument("--out", type=Path, default=None, metavar="PATH",
                     help="write a WAV here (default: play, or out.wav without a sound card); "
                     "with -i: a folder for utterance-<id>.wav files")
    say.add_argument("--api-key", default="", metavar="KEY",
                     help="sent as Authorization: Bearer KEY (default: none)")
    say.add_argument("--json", action="store_true", help="print the result as JSON")
    say.add_argument("--json-audio", action="store_true",
                     help="ask for base64 JSON audio instead of binary frames")
    say.add_argument("--timeout", type=float, default=30.0, metavar="S",
                     help="seconds to wait for an answer from the server before giving up "
                     "(default: 30)")
    say.set_defaults(func=_say)

    talk = sub.add_parser(
        "talk", help="a spoken conversation with the orchestrator (microphone or a WAV)",
        description="Talk with a running orchestrator (conversation mode): the microphone "
        "and the speaker of the sound card, or --input FILE.wav played in real time as the "
        "microphone. Prints transcripts, replies, state changes and latencies. An echo "
        "canceller (WebRTC AEC3) keeps the system from hearing itself through the speaker. "
        "With --input it ends once the conversation has settled after the file; otherwise "
        "Ctrl-C ends it. Exit codes: 0 ok; 1 error: the server cannot be reached or "
        "refuses the config, or it reported an error for the session (any error message, "
        "e.g. REPLY_FAILED for a turn: one failed turn is enough), an utterance failed, or "
        "a turn got no final transcript or no reply without an error; 130 Ctrl-C.")
    talk.add_argument("--url", default="ws://127.0.0.1:8080/ws", metavar="URL",
                      help="orchestrator WebSocket (default: ws://127.0.0.1:8080/ws)")
    talk.add_argument("--api-key", default="", metavar="KEY",
                      help="sent as Authorization: Bearer KEY (default: none)")
    talk.add_argument("--voice", default="", metavar="ID",
                      help="model id of the replies (default: the server's default)")
    talk.add_argument("--reply", default="", metavar="ENGINE",
                      help="reply engine, e.g. echo or openai (default: the server's)")
    talk.add_argument("--input", type=Path, default=None, metavar="WAV",
                      help="play this WAV file (any rate, mono or stereo) in real time as "
                      "the microphone, then silence (default: the sound card's microphone)")
    talk.add_argument("--out", type=Path, default=None, metavar="WAV",
                      help="write what would be played (48 kHz, silence included) to this "
                      "WAV instead of the speaker (default: the speaker; without a sound "
                      "card the audio is discarded)")
    talk.add_argument("--say", default="", metavar="TEXT",
                      help="have the system speak TEXT first (e.g. to check that it does "
                      "not hear itself through your speaker)")
    talk.add_argument("--no-aec", action="store_true",
                      help="no echo cancellation (with headphones)")
    talk.add_argument("--linger", type=float, default=30.0, metavar="S",
                      help="with --input: at most S seconds after the file's end waiting for "
                      "the conversation to settle (default: 30)")
    # A simulated room (speaker leaking into the microphone), for tests and demos.
    talk.add_argument("--simulate-echo", default="", metavar="GAIN_DB:DELAY_MS",
                      help=argparse.SUPPRESS)
    talk.set_defaults(func=_talk)

    up = sub.add_parser(
        "up", help="run one worker and the orchestrator (Ctrl-C stops both)",
        description="Run one TTS worker (a child process, restarted if it dies; its "
        "output is prefixed [worker]) and the orchestrator, on this machine. Every option "
        "of `duplexvoice orchestrator` is taken as it is (flags, DUPLEXVOICE_ORCH_* "
        "variables, --config FILE); every option of `duplexvoice worker` with worker- in "
        "front of its flag (--worker-port, --worker-default-model-id; DUPLEXVOICE_WORKER_* "
        "variables, --worker-config FILE). What up decides itself is refused when given "
        "(--workers). Exit codes: 0 stopped, 1 cannot start, 2 a bad option.",
        formatter_class=HelpFormatter)
    add_up_flags(up)
    up.set_defaults(func=_up)

    bench = sub.add_parser("bench", help="run the benchmarks (bench/*.py of the checkout)",
                           description="Run the benchmarks of the checkout's bench/ folder; "
                           "they print figures.")
    bench.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    bench.add_argument("--only", default="", metavar="LIST",
                       help=f"comma-separated, of: {', '.join(BENCHMARKS)} (default: all)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
