"""Text rules shared by every part that cuts or checks text to speak.

- :mod:`.speakable`: is there anything to say (``speakable``): the orchestrator's test
  for a client's text, a transcript or a reply clause, and the cutters' test for a
  piece worth sending to a voice.
- :mod:`.sentences`: where a sentence ends (``sentence_end``): abbreviations,
  acronyms, initials, list numbers, closing quotes.

The two cutters built on them keep what is theirs: ``replies/clauses.py`` cuts a
streamed reply into clauses (prosody units handed to the worker), and
``worker/textchunk.py`` cuts an utterance into the chunks a model synthesizes one at
a time (first-audio latency).
"""

from __future__ import annotations

from duplexvoice.text.sentences import CLOSERS, OPENERS, SPACES, TERMINALS, WAIT, Wait, sentence_end
from duplexvoice.text.speakable import SYMBOLS, first_speakable, speakable

__all__ = [
    "CLOSERS",
    "OPENERS",
    "SPACES",
    "SYMBOLS",
    "TERMINALS",
    "WAIT",
    "Wait",
    "first_speakable",
    "sentence_end",
    "speakable",
]
