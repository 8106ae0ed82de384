"""Sparsity patterns: what a pruned weight matrix is allowed to look like.

Strings are parsed once, at the edge (:func:`parse_pattern`); inside the library patterns are
the frozen dataclasses :class:`Unstructured` and :class:`NM`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Union

from .errors import PatternError

Scope = Literal["row", "layer", "global"]
SCOPES: tuple[str, ...] = ("row", "layer", "global")


@dataclass(frozen=True)
class Unstructured:
    """Remove a fraction ``sparsity`` of the weights, chosen within each row, layer or model.

    ``scope="row"`` prunes the same count in every output row (Wanda's comparison group);
    ``"layer"`` compares all weights of a layer; ``"global"`` compares across all target layers.
    A user asks for sparsity in [0, 1) (:func:`parse_pattern`, :func:`check_requested`); 1.0
    is valid only for one layer of a global ranking that removes all its weights.
    """

    sparsity: float
    scope: Scope = "row"

    def __post_init__(self) -> None:
        s = self.sparsity
        if not isinstance(s, (int, float)) or s != s or not 0.0 <= s <= 1.0:
            raise PatternError(
                f"sparsity {s!r} is outside [0, 1): pass a fraction such as 0.5 (or '50%')"
            )
        if self.scope not in SCOPES:
            raise PatternError(f"scope {self.scope!r} is unknown: use one of {', '.join(SCOPES)}")

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def __str__(self) -> str:
        return f"{self.sparsity:.0%} unstructured ({self.scope})"


@dataclass(frozen=True)
class NM:
    """At most ``n`` non-zeros in every ``m`` consecutive weights along the input dimension.

    NVIDIA's convention (Mishra et al. 2021): 2:4 and 4:8 are 50 % sparse, 1:4 is 75 %.
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or self.m < 1 or self.n < 1:
            raise PatternError(f"N:M pattern {self.n}:{self.m} needs positive integers, e.g. 2:4")
        if self.n >= self.m:
            raise PatternError(
                f"N:M pattern {self.n}:{self.m} keeps n >= m weights, so it prunes nothing: "
                "use n < m, e.g. 2:4"
            )

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check_fits(self, in_features: int, where: str = "layer") -> None:
        """Raise :class:`PatternError` unless ``in_features`` is a multiple of ``m``."""
        if in_features % self.m:
            raise PatternError(
                f"{where}: in_features={in_features} is not divisible by m={self.m} of pattern "
                f"{self}: choose an m that divides it or skip this layer (--skip)"
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


Pattern = Union[Unstructured, NM]

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def check_requested(pattern: Pattern) -> Pattern:
    """A pattern a user may ask for: unstructured sparsity must lie in [0, 1)."""
    if isinstance(pattern, Unstructured) and pattern.sparsity >= 1.0:
        raise PatternError(
            f"sparsity {pattern.sparsity!r} is outside [0, 1): pass a fraction such as 0.5 "
            "(or '50%')"
        )
    return pattern


def parse_pattern(text: str | float, scope: Scope = "row") -> Pattern:
    """Parse ``"2:4"``, ``"0.5"``, ``"50%"`` (or a float) into a pattern."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return check_requested(Unstructured(float(text), scope))
    s = str(text).strip()
    match = _NM_RE.match(s)
    if match:
        return NM(int(match.group(1)), int(match.group(2)))
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise PatternError(
            f"pattern {text!r} is not understood: use a sparsity such as 0.5 or 50%, "
            "or an N:M pattern such as 2:4"
        ) from None
    return check_requested(Unstructured(value, scope))
