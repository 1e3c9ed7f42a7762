"""Coordination: what Redis accelerates, each with its PostgreSQL fallback (wake-ups,
run-time locks, leadership with fencing terms). The only layer that imports redis; it
uses the store and the vocabulary below it, and nothing below imports it."""

from pgq.coordination.coordinator import Coordinator, Mode
from pgq.coordination.leader import Leadership
from pgq.coordination.wakeups import WAKEUP_CHANNEL, WakeupListener

__all__ = ["WAKEUP_CHANNEL", "Coordinator", "Leadership", "Mode", "WakeupListener"]
