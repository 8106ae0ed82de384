"""Pruning during training: sparsifiers (masks as parametrizations), schedules, lottery
tickets, distillation, and a Hugging Face Trainer callback and distilling Trainer
(:mod:`prunekit.training.hf`)."""

from .distill import distillation_loss, distilled
from .lottery import Ticket, find_ticket, prune_round
from .schedules import Constant, Cubic, OneShot, Schedule
from .gmp import GradualMagnitude
from .movement import HardMovement, ScoredMask, SoftMovement
from .nm import NMSparsifier
from .sparsifier import FixedMask, Masked, Sparsifier, find_targets

__all__ = [
    "Constant", "Cubic", "FixedMask", "GradualMagnitude", "HardMovement", "Masked",
    "NMSparsifier", "OneShot", "Schedule", "ScoredMask", "SoftMovement", "Sparsifier", "Ticket",
    "distillation_loss", "distilled", "find_targets", "find_ticket", "prune_round",
]
