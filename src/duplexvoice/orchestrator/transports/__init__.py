"""How clients reach a session: one module per transport (WebSocket now; WebRTC next).

A transport accepts a connection, reads and parses what the client sends, hands it
to the session's driver, and writes what the driver sends back. It decides nothing
about the session.
"""
