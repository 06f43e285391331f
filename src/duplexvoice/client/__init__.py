"""Command-line clients: ``say`` (text to speech over the WebSocket, one-shot or
interactive), ``talk`` (a conversation from the sound card or a file, with echo
cancellation) and ``synth`` (straight to a worker over gRPC). They share only the
wire package (:mod:`duplexvoice.wire`) with the servers, never their code.
"""
