"""Pruning during training: sparsifiers (masks as parametrizations), schedules, lottery
tickets, and a Hugging Face Trainer callback (:mod:`prunekit.training.hf`)."""

from .lottery import Ticket, find_ticket, prune_round
from .schedules import Constant, Cubic, OneShot, Schedule
from .sparsifier import (FixedMask, GradualMagnitude, HardMovement, Masked, NMSparsifier,
                         ScoredMask, SoftMovement, Sparsifier, find_targets)

__all__ = [
    "Constant", "Cubic", "FixedMask", "GradualMagnitude", "HardMovement", "Masked",
    "NMSparsifier", "OneShot", "Schedule", "ScoredMask", "SoftMovement", "Sparsifier", "Ticket",
    "find_targets", "find_ticket", "prune_round",
]
