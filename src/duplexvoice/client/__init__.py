"""Clients: the worker's gRPC client (this issue) and, later, the WebSocket client."""
