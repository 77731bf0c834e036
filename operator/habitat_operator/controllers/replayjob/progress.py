"""A replay's progress as status shows it: percent, a recent rate and an ETA (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from habitat_operator.durations import format_duration


@dataclass
class Progress:
    """Settled counts over time; `observe` at each checkpoint, read the fields it derives."""

    total: int
    settled: int = 0
    rate: float = 0.0
    _last: tuple[float, int] | None = field(default=None, repr=False)

    def observe(self, now: float, settled: int) -> None:
        """`settled` (published + failed) at monotonic time `now`; the rate is since the last call."""
        if self._last is not None and now > self._last[0]:
            self.rate = max(0.0, (settled - self._last[1]) / (now - self._last[0]))
        self._last = (now, settled)
        self.settled = settled

    @property
    def percent(self) -> str:
        """As kubectl shows a share: 24%, rounded down (100% only when all is settled)."""
        return "100%" if self.total == 0 else f"{min(100, self.settled * 100 // self.total)}%"

    @property
    def ratio(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.settled / self.total)

    @property
    def eta(self) -> str | None:
        remaining = self.total - self.settled
        if remaining <= 0:
            return None
        return format_duration(remaining / self.rate) if self.rate > 0 else None

    def display(self, published: int) -> str:
        return f"{published}/{self.total}"
