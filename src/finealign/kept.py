"""What a command has finished and kept on disk so far: the line a Ctrl-C prints ("stopped;
kept: run directory runs/x, checkpoint runs/x/checkpoints/last.pt (epoch 3)"), so a person knows
what survived and how to go on. Writers note each thing once it is complete on disk."""

from __future__ import annotations

_KEPT: dict[str, str] = {}  # slot → description; a slot written again (a checkpoint per epoch) is replaced


def keep(slot: str, description: str) -> None:
    """Note that `description` is complete on disk (replacing what `slot` said before)."""
    _KEPT.pop(slot, None)
    _KEPT[slot] = description


def kept() -> list[str]:
    return list(_KEPT.values())


def forget() -> None:
    """Start a new record (each command, each test)."""
    _KEPT.clear()
