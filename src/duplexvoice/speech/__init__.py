"""The listening half: microphone audio in, voice activity, speech recognition.

Audio arrives at any rate and frame size; :mod:`.audio_in` resamples it (streaming,
state kept) to the 16 kHz float32 that VAD and Whisper use.
"""

SPEECH_RATE = 16000
