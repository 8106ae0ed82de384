"""Accuracy against size: recipes of compression choices, their validation, and the Pareto
frontier of measured (bytes, quality) points. Pure data and maths; ``api.pareto`` runs them.

A recipe is one point of a grid: a pruning method and pattern (or none), a quantization
(bits, group, symmetric, quantizer) or none, and the dtype of the float tensors stored. A grid
file is YAML:

    points:
      - {name: dense-fp16, dtype: float16}
      - {name: sgpt-50-int4, method: sparsegpt, pattern: "0.5", bits: 4, group: 128}
      - {name: rtn-int4, bits: 4, quantizer: rtn}

Unknown keys and impossible combinations are errors before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import PrunekitError, UsageError
from ..plan import check_kind, resolve_pattern

DTYPES = ("float32", "float16", "bfloat16")
QUANTIZERS = ("gptq", "rtn", "awq")


@dataclass(frozen=True)
class Recipe:
    """name: unique label. method/pattern: pruning (None: dense). bits/group/symmetric: the
    grid (bits None: no quantization; group None: per channel). quantizer: gptq (with
    sparsegpt: in the same sweep, joint), rtn, or awq (quantization only). dtype: the dtype of
    the float tensors after compression (embeddings, norms, pruned float weights; quantized
    layers are stored as codes whatever it is)."""

    name: str
    method: str | None = None
    pattern: str | None = None
    bits: int | None = None
    group: int | None = 128
    symmetric: bool = True
    quantizer: str = "gptq"
    dtype: str = "float32"

    def check(self) -> None:
        """Raise :class:`UsageError` for an impossible recipe, naming it."""
        where = f"grid point {self.name!r}"
        if (self.method is None) != (self.pattern is None):
            raise UsageError(f"{where}: 'method' and 'pattern' go together (e.g. sparsegpt "
                             "and 0.5), or neither for a dense point")
        if self.dtype not in DTYPES:
            raise UsageError(f"{where}: dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.quantizer not in QUANTIZERS:
            raise UsageError(f"{where}: quantizer {self.quantizer!r}: use one of "
                             f"{', '.join(QUANTIZERS)}")
        if self.bits is not None and self.bits not in (2, 3, 4, 8):
            raise UsageError(f"{where}: bits {self.bits!r}: use 2, 3, 4 or 8")
        if self.bits is None and self.quantizer != "gptq":
            raise UsageError(f"{where}: quantizer {self.quantizer!r} without bits")
        if self.method is not None and self.bits is not None and self.quantizer == "awq":
            raise UsageError(f"{where}: awq quantizes dense models; with pruning use gptq "
                             "(joint with sparsegpt) or rtn")
        if self.group is not None and (not isinstance(self.group, int) or self.group < 1):
            raise UsageError(f"{where}: group {self.group!r} must be a positive integer or null")
        if self.method is not None:
            try:
                check_kind(self.method, "prune")
                resolve_pattern(self.pattern, self.method)
            except PrunekitError as exc:
                raise UsageError(f"{where}: {exc}") from None

    def describe(self) -> str:
        parts = [f"{self.method} {self.pattern}"] if self.method else []
        if self.bits:
            group = "channel" if self.group is None else f"g{self.group}"
            parts.append(f"int{self.bits} {group} {self.quantizer}")
        if not parts:
            return f"dense {self.dtype}"
        return " + ".join(parts) + ("" if self.dtype == "float32" else f" ({self.dtype})")


FIELDS = {f.name for f in dataclasses.fields(Recipe)}


def _baseline(name: str, **kw: Any) -> Recipe:
    return Recipe(name=name, **kw)


def default_grid() -> list[Recipe]:
    """Dense fp32/fp16/bf16, int8, int4 g128, 50 % and 2:4, each with int4, 70/80/90 % + int4
    (joint SparseGPT + GPTQ), and magnitude-only / RTN-only baselines at the same points. Every
    compressed point keeps its other float tensors in float16, as models are shipped."""
    h = "float16"
    grid = [Recipe("dense-fp32"), Recipe("dense-fp16", dtype=h), Recipe("dense-bf16", dtype="bfloat16"),
            Recipe("int8-gptq", bits=8, group=None, dtype=h), Recipe("int4-gptq", bits=4, dtype=h),
            Recipe("sgpt-50", "sparsegpt", "0.5", dtype=h),
            Recipe("sgpt-2:4", "sparsegpt", "2:4", dtype=h),
            Recipe("sgpt-50-int4", "sparsegpt", "0.5", bits=4, dtype=h),
            Recipe("sgpt-2:4-int4", "sparsegpt", "2:4", bits=4, dtype=h)]
    grid += [Recipe(f"sgpt-{int(s * 100)}-int4", "sparsegpt", str(s), bits=4, dtype=h)
             for s in (0.7, 0.8, 0.9)]
    grid += [Recipe("int8-rtn", bits=8, group=None, quantizer="rtn", dtype=h),
             Recipe("int4-rtn", bits=4, quantizer="rtn", dtype=h),
             Recipe("mag-50", "magnitude", "0.5", dtype=h),
             Recipe("mag-2:4", "magnitude", "2:4", dtype=h),
             Recipe("mag-50-int4-rtn", "magnitude", "0.5", bits=4, quantizer="rtn", dtype=h),
             Recipe("mag-2:4-int4-rtn", "magnitude", "2:4", bits=4, quantizer="rtn", dtype=h)]
    grid += [Recipe(f"mag-{int(s * 100)}-int4-rtn", "magnitude", str(s), bits=4,
                    quantizer="rtn", dtype=h) for s in (0.7, 0.8, 0.9)]
    return grid


def parse_grid(data: Any, source: str = "grid") -> list[Recipe]:
    """Recipes from a parsed grid file ({"points": [{...}, ...]}), all checked, names unique."""
    if not isinstance(data, dict) or set(data) != {"points"} or not isinstance(data["points"], list):
        raise UsageError(f"{source}: a grid file holds one key, 'points', with a list of "
                         "points (see docs/pareto.md)")
    recipes, names = [], set()
    for i, point in enumerate(data["points"]):
        if not isinstance(point, dict) or "name" not in point:
            raise UsageError(f"{source}: point {i + 1} must be a mapping with a 'name'")
        unknown = sorted(set(point) - FIELDS)
        if unknown:
            raise UsageError(f"{source}: point {point['name']!r} has unknown key(s) "
                             f"{', '.join(unknown)}: use {', '.join(sorted(FIELDS))}")
        if point["name"] in names:
            raise UsageError(f"{source}: two points are named {point['name']!r}")
        names.add(point["name"])
        fields = {**point, "name": str(point["name"])}
        if fields.get("pattern") is not None:
            fields["pattern"] = str(fields["pattern"])
        recipe = Recipe(**fields)
        recipe.check()
        recipes.append(recipe)
    if not recipes:
        raise UsageError(f"{source}: the grid has no points")
    return recipes


def load_grid(spec: str) -> list[Recipe]:
    """``"default"`` or the path of a YAML grid file."""
    if spec == "default":
        grid = default_grid()
        for r in grid:
            r.check()
        return grid
    try:
        with open(spec) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"--grid {spec!r}: {exc.strerror}: pass 'default' or a YAML file") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--grid {spec!r} is not valid YAML: {exc}") from None
    return parse_grid(data, spec)


def frontier(points: list[dict], quality: str, higher_is_better: bool = True) -> list[bool]:
    """Which points are Pareto-optimal in (bytes: smaller better, ``quality``). A point is
    dominated when another is no larger and no worse, and strictly better in one; identical
    points do not dominate each other (both stay)."""
    def better_eq(a: float, b: float) -> bool:
        return a >= b if higher_is_better else a <= b

    out = []
    for p in points:
        dominated = any(
            q is not p and q["bytes"] <= p["bytes"] and better_eq(q[quality], p[quality])
            and (q["bytes"] < p["bytes"] or q[quality] != p[quality])
            for q in points)
        out.append(not dominated)
    return out


def dominated_by(points: list[dict], quality: str, higher_is_better: bool = True
                 ) -> dict[str, list[str]]:
    """{point name: names of the points it dominates}."""
    def better_eq(a: float, b: float) -> bool:
        return a >= b if higher_is_better else a <= b

    return {q["name"]: [p["name"] for p in points if p is not q and q["bytes"] <= p["bytes"]
                        and better_eq(q[quality], p[quality])
                        and (q["bytes"] < p["bytes"] or q[quality] != p[quality])]
            for q in points}


#: The literature's rough frontier (fraction of dense fp16 size, relative quality loss).
LITERATURE = [("dense int8", 1 / 2, 0.01), ("50 % sparse + int4", 1 / 8, 0.03),
              ("90 % sparse + int4", 1 / 30, 0.05)]
