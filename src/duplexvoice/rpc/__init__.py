"""Worker protocol: ``tts.proto`` and the code generated from it (``make proto``).

The generated modules are committed so that an install needs no code generator; they
are never edited by hand.
"""
