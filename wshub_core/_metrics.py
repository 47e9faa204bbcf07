"""Counters the hub keeps, and their Prometheus text exposition.

The core counts; it never samples a clock or the process, so anything the
shell alone can measure (event-loop lag) is handed in as a gauge.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["Sample", "Stats", "render"]

Sample = tuple[str, str, str, list[tuple[str, float]]]  # one metric: name, type, help, [(labels, value)]


class Stats:
    __slots__ = (
        "connects",
        "closes",
        "http_answers",
        "messages_in",
        "messages_out",
        "bytes_out",
        "group_messages",
        "loop_lag",
        "rate_limited",
    )

    def __init__(self) -> None:
        self.connects = 0  # WebSocket upgrades accepted
        self.closes: Counter[int] = Counter()  # by close code (0: HTTP answer, 1006: no close frame)
        self.http_answers: Counter[int] = Counter()  # by status
        self.messages_in = 0  # client messages received (and queued for PUBLISH)
        self.messages_out = 0  # WebSocket messages delivered to clients (one per member)
        self.bytes_out = 0  # frame bytes queued to clients
        self.group_messages = 0  # group-data messages received from Redis
        self.loop_lag = 0.0  # reported by the shell (Hub.loop_lag)
        self.rate_limited = 0  # clients closed for their message or byte rate


def render(samples: list[Sample]) -> str:
    """Prometheus text format 0.0.4 from (name, type, help, [(labels, value)])."""
    lines = []
    for name, kind, help_text, values in samples:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in values:
            number = repr(float(value)) if isinstance(value, float) else str(value)
            lines.append(f"{name}{labels} {number}")
    return "\n".join(lines) + "\n"
