"""Pruning during training: sparsifiers (masks as parametrizations), schedules, lottery
tickets, and a Hugging Face Trainer callback (:mod:`prunekit.training.hf`)."""

from .lottery import Ticket, find_ticket, prune_round
from .schedules import Constant, Cubic, OneShot, Schedule
from .gmp import GradualMagnitude
from .movement import HardMovement, ScoredMask, SoftMovement
from .nm import NMSparsifier
from .sparsifier import FixedMask, Masked, Sparsifier, find_targets

__all__ = [
    "Constant", "Cubic", "FixedMask", "GradualMagnitude", "HardMovement", "Masked",
    "NMSparsifier", "OneShot", "Schedule", "ScoredMask", "SoftMovement", "Sparsifier", "Ticket",
    "find_targets", "find_ticket", "prune_round",
]
