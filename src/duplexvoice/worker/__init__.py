"""The TTS worker: gRPC service, model manager, voice packs and adapters."""
