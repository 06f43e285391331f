"""The tables ``bench/vad.py`` prints (the figures are its JSON)."""

from __future__ import annotations

from vad_clips import CONDITIONS


def cell(d: object, keys: tuple[str, ...] = ("p50", "p95")) -> str:
    if not isinstance(d, dict) or not d.get("n"):
        return "-"
    return "/".join(f"{d[k]:.0f}" for k in keys)


def print_tables(result: dict[str, object]) -> None:
    print(f"\nVAD: {result['clip_counts']}")
    print("Strict onsets (system speaking -> pause): ms after the true start, audio time "
          "(input: as pushed by a 48 kHz client in 20 ms chunks); fast: onsets by the fast "
          "rule (unc: fast onsets on speech the model did not confirm in time; spl: extra "
          "onsets in speech clips); start: the onset's start_s - the true start; holds: "
          "onsets on clips with no speech (clips with one), by noise")
    print(f"{'option':35} {'all p50/95/max':>14} {'quiet':>7} {'q-20s':>7} {'n-40':>7} "
          f"{'n-30':>7} {'n-20':>8} {'clip':>7} {'input':>7} {'in.qt':>7} {'start':>7} "
          f"{'fast':>4} {'unc':>3} {'spl':>3} {'miss':>4} | "
          f"{'b.quiet':>7} {'b-40':>5} {'b-30':>5} {'b-20':>5} {'series':>6} "
          f"{'st-40':>5} {'st-30':>5} {'st-20':>5} {'step':>4} {'sil':>3} {'echo':>4}")
    for r in result["strict"]:  # type: ignore[attr-defined]
        bc = r["onset_by_condition_ms"]
        h, hc = r["false_holds"], r["clips_with_false_holds"]

        def hold(k: str, h: dict[str, int] = h, hc: dict[str, int] = hc) -> str:
            return f"{h.get(k, 0)}({hc.get(k, 0)})" if h.get(k, 0) else "0"
        print(f"{r['option']:35} {cell(r['onset_ms'], ('p50', 'p95', 'max')):>14} "
              + " ".join(f"{cell(bc[c]):>7}" for c in CONDITIONS[:4])
              + f" {cell(bc['noise-20']):>8} {cell(bc['clipped']):>7} "
              f"{cell(r['onset_input_ms']):>7} {cell(r['onset_input_quiet_ms']):>7} "
              f"{cell(r['start_error_ms']):>7} "
              f"{r['fast_onsets']:>4} {r['fast_unconfirmed_on_speech']:>3} "
              f"{r['strict_splits']:>3} {len(r['missed']):>4} | "
              f"{hold('burst_quiet'):>7} {hold('burst-40'):>5} {hold('burst-30'):>5} "
              f"{hold('burst-20'):>5} {h.get('series', 0):>6} {hold('noise-40'):>5} "
              f"{hold('noise-30'):>5} {hold('noise-20'):>5} {h.get('noise_step', 0):>4} "
              f"{h.get('silence', 0):>3} {r['echo_clips_with_onset']:>4}")
    print("\nOn bench/conversation.py's own set (10 interruptions, 10 bursts; digital "
          "silence before each): each item alone: onset audio p50/p95/max, input "
          "p50/p95/max, holds on bursts; all in one stream, twice: onset p50/p95/max, holds")
    for r in result["strict"]:  # type: ignore[attr-defined]
        print(f"{r['option']:35} {cell(r['conversation_onset_ms'], ('p50', 'p95', 'max')):>14}"
              f" {cell(r['conversation_onset_input_ms'], ('p50', 'p95', 'max')):>14} "
              f"{r['conversation_burst_holds']:>3} | "
              f"{cell(r['conversation_sequence_onset_ms'], ('p50', 'p95', 'max')):>14} "
              f"{r['conversation_sequence_burst_holds']:>3}")
    print("\nNon-strict (the user's turn while the system is silent): onset and offset "
          "delay (ms), end error (the offset's end_s - the true end: the end-of-turn wait "
          "counts from it), splits, false onsets on non-speech clips")
    print(f"{'option':28} {'onset p50/95':>12} {'offset p50/95/max':>18} "
          f"{'end err p50/95':>14} {'splits':>6} {'false':>5}")
    for r in result["nonstrict"]:  # type: ignore[attr-defined]
        print(f"{r['option']:28} {cell(r['onset_ms']):>12} "
              f"{cell(r['offset_ms'], ('p50', 'p95', 'max')):>18} "
              f"{cell(r['end_error_ms']):>14} {r['splits']:>6} "
              f"{r['false_onsets']:>5}")
    print("\n256 hops against the 512 hop where their windows coincide (|p difference|, "
          "agreement at 0.5):")
    for k, v in result["off_grid"].items():  # type: ignore[attr-defined]
        print(f"  {k:34} {v:8.3f}")
    print("\nCPU (us, min / p50 over passes):")
    for k, v in result["cpu_us"].items():  # type: ignore[attr-defined]
        if isinstance(v, dict):
            print(f"  {k:36} {v['min']:8.1f} {v['p50']:8.1f}")
        else:
            print(f"  {k:36} {v:8.3g}")
