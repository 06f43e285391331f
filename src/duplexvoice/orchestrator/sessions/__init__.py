"""One client session: the pure cores (the session machine and its conversation
half, turn-taking, playout, settings) and the asyncio driver that carries out their
decisions. Transports (:mod:`..transports`) feed a driver; the driver reaches workers
through :mod:`..workers`.
"""
