from __future__ import annotations

import pytest

from duplexvoice.worker.session import SessionOptionError, parse_options

pytestmark = pytest.mark.unit


def test_speed_and_unknown_options() -> None:
    options = parse_options({"speed": "1.5", "emotion": "calm"})
    assert options.speed == 1.5 and options.extra == {"emotion": "calm"}
    assert parse_options({}).speed == 1.0


@pytest.mark.parametrize("value", ["fast", "0", "-1", "4.5", "nan"])
def test_bad_speed(value: str) -> None:
    with pytest.raises(SessionOptionError, match="speed"):
        parse_options({"speed": value})
