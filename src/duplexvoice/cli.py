"""``duplexvoice``: one entry point with subcommands.

- ``duplexvoice worker``: run a TTS worker (gRPC, default port 7001).
- ``duplexvoice synth "text" --out hello.wav``: speak through a running worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from duplexvoice.config import ConfigError, add_flags, load_config


def _worker(args: argparse.Namespace) -> int:
    from duplexvoice.worker.config import ENV_PREFIX, WorkerConfig
    from duplexvoice.worker.server import serve

    try:
        config = load_config(WorkerConfig, yaml_path=args.config, env_prefix=ENV_PREFIX, flags=args)
    except ConfigError as exc:
        print(f"duplexvoice worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"duplexvoice worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _synth(args: argparse.Namespace) -> int:
    import grpc

    from duplexvoice.client.worker_client import WorkerClient, synthesize_text, write_wav

    async def run() -> int:
        async with WorkerClient(args.worker) as client:
            try:
                await client.wait_ready(args.timeout)
                result = await synthesize_text(client, args.text, args.voice,
                                               {"speed": str(args.speed)})
            except TimeoutError:
                print(f"no worker answers at {args.worker}", file=sys.stderr)
                return 1
            except grpc.aio.AioRpcError as exc:
                print(f"worker error {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
        write_wav(args.out, result.pcm)
        print(
            f"wrote {args.out} ({result.audio_ms / 1000:.2f} s of audio); "
            f"first audio after {result.first_audio_ms or 0:.0f} ms, "
            f"done after {result.total_ms:.0f} ms"
        )
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    from duplexvoice.worker.config import WorkerConfig

    parser = argparse.ArgumentParser(prog="duplexvoice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a TTS worker (gRPC)")
    worker.add_argument("--config", type=Path, default=None,
                        help="YAML file (e.g. configs/worker.yaml)")
    add_flags(worker, WorkerConfig)
    worker.set_defaults(func=_worker)

    synth = sub.add_parser("synth", help="speak text through a running worker into a WAV")
    synth.add_argument("text")
    synth.add_argument("--worker", default="127.0.0.1:7001", help="worker address host:port")
    synth.add_argument("--voice", default="", help="model id (default: the worker's default)")
    synth.add_argument("--speed", type=float, default=1.0)
    synth.add_argument("--out", type=Path, default=Path("out.wav"))
    synth.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the worker")
    synth.set_defaults(func=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
