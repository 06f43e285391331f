"""The orchestrator's view of the TTS workers: which exist (the registry), which to
route to (the pure router and health), and the gRPC link to them (sessions, frames,
control calls).
"""
