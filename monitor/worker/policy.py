"""The decision policy: what serving is told to do about an event or a source."""

from __future__ import annotations

from typing import Literal

from schemas import Action

__all__ = ["Policy", "quarantine_due", "request_action", "source_action"]

Policy = Literal["observe", "enforce"]
"""``observe`` never asks for more than ``flag``; ``enforce`` may quarantine."""


def request_action(flagged: bool, policy: Policy) -> Action:
    """The per-request action: ``allow`` unless flagged; flagged requests are quarantined
    under ``enforce`` and flagged under ``observe``.

    >>> request_action(False, "enforce"), request_action(True, "observe")
    (<Action.ALLOW: 'allow'>, <Action.FLAG: 'flag'>)
    """
    if not flagged:
        return Action.ALLOW
    return Action.QUARANTINE if policy == "enforce" else Action.FLAG


def source_action(enforce: bool) -> Action:
    """The action for a source past its flag limit: quarantine when enforced, else flag."""
    return Action.QUARANTINE if enforce else Action.FLAG


def quarantine_due(count: int, limit: int, in_force_until: float, now: float) -> bool:
    """Whether a source with ``count`` flags in the window gets a new quarantine decision.

    Only one decision is published while a quarantine is in force.

    >>> quarantine_due(20, 20, 0.0, 100.0), quarantine_due(25, 20, 150.0, 100.0)
    (True, False)
    """
    return count >= limit and in_force_until <= now
