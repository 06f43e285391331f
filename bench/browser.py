"""The browser client over WebRTC and over WebSocket, measured in the page (issue 9).

    .venv/bin/python bench/browser.py [--blocks 6] [--cycles 5] [--connects 30]
        [--cpu-sessions 4] [--cpu-window-s 15] [--cpu-rounds 3] [--only PART,...] [--json]

One Piper worker and one orchestrator (echo replies, Whisper tiny.en) in their own
processes; the page (``/``) in Debian's headless Chromium driven by Playwright, its
microphone Chromium's fake device playing a WAV made at run time. Everything below is
read from ``window.duplexvoice`` (see ``src/duplexvoice/web/measure.js``): audio
times are the page's AudioContext clock, shared by the capture and playback worklets.

- ``talk``: the WAV is one cycle, looped by Chromium: a sentence; a noise burst and
  then a second sentence during the echo reply (a false interruption, then a real
  one); silence. Blocks of ``--cycles`` cycles alternate between WebRTC and WebSocket
  (A B A B ...), a fresh browser per block. Figures, per transport: voice-to-voice
  (reply audio onset at the page's output - the last voiced microphone block before
  it), the hold (``pause`` arrival -> first silent output block), silence after
  ``interrupt`` (arrival -> first silent block) and the audio energy of an
  interrupted utterance heard after its ``interrupt`` (must be 0).
- ``connect``: connect -> usable (WebRTC: the peer connected and the remote track
  live; WebSocket: ``session_start``), alternating transports, one page.
- ``cpu``: orchestrator CPU per session with Opus both ways against the WebSocket
  path (``bench/browser_load.py``), and sessions per core from it.

Targets (issue 9): WebRTC voice-to-voice <= WebSocket + 40 ms; WebRTC connect p50 <=
500 ms; hold and interrupt p95 <= 30 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support

from browser_load import measure_cpu  # noqa: E402
from worker import PIPER, machine, summary  # noqa: E402

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess  # noqa: E402
from tests.support.browser import browser_page, find_chromium  # noqa: E402
from tests.support.speech import SPEAKERS, noise, say, silence, write_wav  # noqa: E402

PARTS = ("talk", "connect", "cpu")
TRANSPORTS = ("webrtc", "websocket")
RATE = 16000
FIRST = "Could you tell me what the weather will be like in the mountains tomorrow?"
SECOND = "Wait, stop, that is enough."


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cycle_wav(path: Path) -> tuple[Path, float]:
    """One talk cycle (looped by Chromium) and its length in seconds. The echo reply to
    the first sentence starts about half a second after it and lasts about as long:
    the noise lands in its first third, the second sentence in its second half."""
    first = say(FIRST, SPEAKERS[0])
    reply_s = len(first) / RATE
    second = say(SECOND, SPEAKERS[0])
    burst = noise(0.15, 0.3)
    track = np.concatenate([
        silence(0.5), first, silence(0.6 + reply_s * 0.25), burst,
        silence(reply_s * 0.35), second, silence(4.0)])
    write_wav(path, track, RATE)
    return path, len(track) / RATE


def records(page: Any, kind: str) -> list[dict[str, Any]]:
    return list(page.eval(f"dv.measurements.filter(r => r.kind === {json.dumps(kind)})"))


def talk_block(playwright: Any, url: str, transport: str, wav: Path, cycle_s: float,
               cycles: int) -> dict[str, Any]:
    with browser_page(playwright, f"bench-{transport}", wav) as page:
        page.open(url, transport)
        page.connect(timeout_s=30)
        # Each cycle answers two turns (the sentence, then the barge-in).
        page.wait(f"dv.measurements.filter(r => r.kind === 'voice_to_voice').length >= "
                  f"{2 * cycles}", cycle_s * cycles + 30, "talk cycles")
        out = {kind: records(page, kind)
               for kind in ("voice_to_voice", "hold", "interrupt", "server")}
        out["utterances"] = page.eval("dv.utterances")
        out["rtc_delays"] = page.page.evaluate("() => window.duplexvoice.rtcDelays()")
        out["transport"] = page.eval("dv.transport")
    return out


def run_talk(playwright: Any, url: str, blocks: int, cycles: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        wav, cycle_s = cycle_wav(Path(tmp) / "cycle.wav")
        got: dict[str, dict[str, list[float]]] = {
            t: {"voice_to_voice": [], "hold": [], "interrupt": [], "after_interrupt": [],
                "reply_to_onset": [], "server_voice_to_voice": [], "hold_render": [],
                "interrupt_render": []}
            for t in TRANSPORTS}
        fell_back = 0
        rtc_delays: list[dict[str, float]] = []
        for b in range(blocks):
            for transport in (TRANSPORTS if b % 2 == 0 else TRANSPORTS[::-1]):
                block = talk_block(playwright, url, transport, wav, cycle_s, cycles)
                fell_back += block["transport"] != transport
                into = got[transport]
                for kind in ("voice_to_voice", "hold", "interrupt"):
                    into[kind] += [float(r["ms"]) for r in block[kind]]
                if block["rtc_delays"]:
                    rtc_delays.append(block["rtc_delays"])
                into["reply_to_onset"] += [float(r["reply_to_onset_ms"])
                                           for r in block["voice_to_voice"]
                                           if r.get("reply_to_onset_ms") is not None]
                into["server_voice_to_voice"] += [float(r["voice_to_voice_ms"])
                                                  for r in block["server"]
                                                  if r.get("voice_to_voice_ms") is not None]
                for kind in ("hold", "interrupt"):
                    into[f"{kind}_render"] += [float(r["render_ms"]) for r in block[kind]
                                               if r.get("render_ms") is not None]
                into["after_interrupt"] += [
                    float(u.get("energy_after_interrupt") or 0.0)
                    for u in block["utterances"].values() if u.get("interrupted")]
                log(f"  block {b + 1}/{blocks} {transport:9s}: v2v "
                    f"{summary(into['voice_to_voice'])['p50']:.0f} ms p50 so far, "
                    f"{len(block['hold'])} holds, {len(block['interrupt'])} interrupts")
    return {"cycle_s": cycle_s, "fell_back_to_websocket": fell_back,
            "webrtc_browser_delays": {k: summary([float(d[k]) for d in rtc_delays
                                                  if d.get(k) is not None])
                                      for k in ("jitter_buffer_ms", "jitter_target_ms",
                                                "playout_ms")},
            **{t: {k: summary(v) if k != "after_interrupt" else
                   {"n": len(v), "nonzero": sum(1 for e in v if e > 0)}
                   for k, v in got[t].items()} for t in TRANSPORTS},
            "raw": got}


def run_connect(playwright: Any, url: str, connects: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "quiet.wav", silence(5.0), RATE)
        with browser_page(playwright, "bench-connect", wav) as page:
            page.open(url, "webrtc")
            for i in range(connects):
                for transport in (TRANSPORTS if i % 2 == 0 else TRANSPORTS[::-1]):
                    page.page.select_option("#transport", transport)
                    before = len(records(page, "connect"))
                    page.connect(timeout_s=30)
                    got = records(page, "connect")[before:]
                    times[transport] += [float(r["ms"]) for r in got
                                         if r.get("transport") == transport]
                    page.page.click("#connect")  # disconnect
                    page.wait("dv.connection === 'disconnected'", 10, "disconnected")
    return {t: summary(v) for t, v in times.items()} | {"raw": times}


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"\nbrowser client (issue 9) - {m['cores']} cores, {m['cpu']}; voice {PIPER}, "
          "Whisper tiny.en, echo replies; Chromium headless, fake microphone")
    talk = result.get("talk")
    if talk:
        print(f"\n{'figure (ms, in the page)':34s} {'transport':10s} {'n':>4s} {'p50':>7s} "
              f"{'p95':>7s} {'max':>7s}")
        for kind, label in (("voice_to_voice", "voice-to-voice"),
                            ("server_voice_to_voice", "  of it in the server"),
                            ("reply_to_onset", "  `reply` message -> audio onset"),
                            ("hold", "held after pause (as heard)"),
                            ("hold_render", "  rendered by the page"),
                            ("interrupt", "silent after interrupt (as heard)"),
                            ("interrupt_render", "  rendered by the page")):
            for t in TRANSPORTS:
                s = talk[t][kind]
                print(f"{label:34s} {t:10s} {s['n']:4d} {s['p50']:7.1f} {s['p95']:7.1f} "
                      f"{s['max']:7.1f}")
        w, s = talk["webrtc"]["voice_to_voice"], talk["websocket"]["voice_to_voice"]
        print(f"WebRTC - WebSocket voice-to-voice: p50 {w['p50'] - s['p50']:+.1f} ms, "
              f"p95 {w['p95'] - s['p95']:+.1f} ms (target <= +40 ms); ratio p50 "
              f"{w['p50'] / s['p50']:.2f}")
        for t in TRANSPORTS:
            a = talk[t]["after_interrupt"]
            print(f"interrupted utterances with audio after the interrupt ({t}): "
                  f"{a['nonzero']} of {a['n']}")
        d = talk["webrtc_browser_delays"]
        print("WebRTC voice in the browser (getStats, mean per block, p50 of blocks): "
              f"jitter buffer {d['jitter_buffer_ms']['p50']:.1f} ms (target "
              f"{d['jitter_target_ms']['p50']:.1f}), playout {d['playout_ms']['p50']:.1f} ms")
        if talk["fell_back_to_websocket"]:
            print(f"WebRTC blocks that fell back to WebSocket: {talk['fell_back_to_websocket']}")
    conn = result.get("connect")
    if conn:
        for t in TRANSPORTS:
            s = conn[t]
            print(f"connect -> usable {t:10s} n={s['n']} p50 {s['p50']:.0f} ms, "
                  f"p95 {s['p95']:.0f} ms, max {s['max']:.0f} ms")
    cpu = result.get("cpu")
    if cpu:
        print(f"\norchestrator CPU per session ({cpu['sessions']} sessions, "
              f"{cpu['rounds']} x {cpu['window_s']} s windows, idle {cpu['idle_percent']:.1f} %):")
        for t in ("webrtc", "websocket"):
            print(f"  {t:10s} {cpu[t]['percent_per_session']:5.1f} % of a core per session "
                  f"-> {cpu[t]['sessions_per_core']:.0f} sessions per core")
        print(f"  WebRTC / WebSocket: {cpu['webrtc_over_websocket']:.1f} x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=6, help="talk blocks per transport")
    ap.add_argument("--cycles", type=int, default=5, help="talk cycles per block")
    ap.add_argument("--connects", type=int, default=30)
    ap.add_argument("--cpu-sessions", type=int, default=4)
    ap.add_argument("--cpu-window-s", type=float, default=15.0)
    ap.add_argument("--cpu-rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--quick", action="store_true", help="a smoke run, not for quoting")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if parts - set(PARTS):
        raise SystemExit(f"--only: unknown part(s) {sorted(parts - set(PARTS))}; of {PARTS}")
    if args.quick:
        args.blocks, args.cycles, args.connects = 2, 2, 5
        args.cpu_window_s, args.cpu_rounds = 5.0, 1
    if parts & {"talk", "connect"} and find_chromium() is None:
        raise SystemExit("bench/browser.py needs Debian's chromium package "
                         "(as root: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    worker = WorkerProcess("--preload-model-ids", PIPER, "--log-level", "WARNING",
                           name="tts-worker-browserbench").start()
    orch = OrchestratorProcess("--workers", worker.addr, "--default-voice", PIPER,
                               "--reply-engine", "echo", "--log-level", "WARNING").start()
    url = f"http://{orch.addr}/"
    started = time.monotonic()
    try:
        if parts & {"talk", "connect"}:
            with sync_playwright() as playwright:
                if "connect" in parts:
                    log("connect ...")
                    result["connect"] = run_connect(playwright, url, args.connects)
                if "talk" in parts:
                    log("talk ...")
                    result["talk"] = run_talk(playwright, url, args.blocks, args.cycles)
        if "cpu" in parts:
            log("cpu ...")
            result["cpu"] = asyncio.run(measure_cpu(
                f"http://{orch.addr}", orch.proc.pid, sessions=args.cpu_sessions,
                window_s=args.cpu_window_s, rounds=args.cpu_rounds, log=log))
    finally:
        orch.terminate()
        worker.terminate()
    result["wall_s"] = time.monotonic() - started
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "browser.json").write_text(json.dumps(result, indent=1))
    if not args.json:
        print_report(result)
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, default=str)
          if args.json else "")


if __name__ == "__main__":
    main()
