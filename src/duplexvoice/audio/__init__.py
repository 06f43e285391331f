"""The audio format every worker emits and every client receives.

One frame is 20 ms of 48 kHz mono PCM16LE: 960 samples, 1920 bytes (WIRE §1, §2).
"""

from typing import Final

SAMPLE_RATE: Final = 48000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES: Final = FRAME_SAMPLES * 2
TARGET_LUFS: Final = -16.0
