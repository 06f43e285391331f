"""What both sides of a connection share, and nothing else: the WebSocket client
protocol (its messages, codes and codecs), the gRPC target and channel options of the
worker protocol (its generated code is :mod:`duplexvoice.rpc`), the worker registry
record, and ports. Clients, the orchestrator and the worker import it; it imports
none of them (``scripts/check-imports``).
"""
