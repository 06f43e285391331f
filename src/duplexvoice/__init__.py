"""duplexvoice: realtime speech-to-speech with streaming TTS workers."""

__version__ = "0.1.0"
