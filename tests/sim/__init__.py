"""Deterministic simulation of a whole WS-Hub: see ``world.py`` for what it checks."""

from __future__ import annotations

from .world import SimFailure, World, run_seed

__all__ = ["SimFailure", "World", "run_seed"]
