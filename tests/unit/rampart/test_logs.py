"""Log records any client can trigger are capped, and the cap says what it held back."""

from __future__ import annotations

import logging

from rampart.logs import RateLimitFilter


def record(created: float) -> logging.LogRecord:
    r = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request", (), None)
    r.created = created
    return r


def test_at_most_n_a_minute_then_a_count_of_what_was_held() -> None:
    cap = RateLimitFilter(per_minute=3)
    passed = [cap.filter(record(1000 + i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    later = record(1061)
    assert cap.filter(later)
    assert later.getMessage() == "Error handling request (7 similar records held back in the last minute)"
