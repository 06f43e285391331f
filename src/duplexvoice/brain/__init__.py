"""The brain: a small local language model as a service (``duplexvoice brain``).

Its own process, speaking OpenAI's streaming chat-completions API on a local port,
so the orchestrator's ``openai`` reply engine talks to it exactly as to a remote
server, and a slow or crashed model never stalls the orchestrator's event loop.

- :mod:`.config`: ``BrainConfig`` (flags, ``DUPLEXVOICE_BRAIN_*``, YAML);
- :mod:`.protocol`: the request and answer format, pure;
- :mod:`.runtime`: the model (``xllamacpp``: llama.cpp's server as a Python object);
- :mod:`.server`: the HTTP server (aiohttp).

Only this process imports ``xllamacpp`` (in :meth:`.runtime.BrainRuntime.load`).
"""
