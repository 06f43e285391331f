"""The orchestrator: client sessions, routing and transports."""
