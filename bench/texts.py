"""The fixed reference texts every benchmark uses."""

TEXTS: dict[str, str] = {
    "short": "Hello there, how are you today?",
    "medium": "The meeting has been moved to three o'clock on Thursday afternoon.",
    "long": (
        "When the morning train finally pulled into the station, the passengers who had "
        "waited in the cold for nearly an hour rushed forward to find their seats."
    ),
    "multi": (
        "It was a bright cold day in April, and the clocks were striking thirteen. "
        "Winston walked quickly through the glass doors. "
        "The hallway smelt of boiled cabbage and old rag mats. "
        "At one end of it a coloured poster, too large for indoor display, had been "
        "tacked to the wall."
    ),
}
