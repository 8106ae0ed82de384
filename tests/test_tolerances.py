"""One shared tolerance table: every tolerance of the suite is an entry of ``conftest.TOL``
(named for what it allows), none a number written at the comparison."""

import re
from pathlib import Path

from conftest import TOL

TESTS = Path(__file__).parent
LITERAL = re.compile(r"\b(?:atol|rtol|abs|rel)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)")


def literal_tolerances(text: str) -> list[str]:
    """The tolerances written as numbers (0, no slack at all, is not a tolerance)."""
    return [m.group(0) for m in LITERAL.finditer(text) if float(m.group(1)) != 0]


def test_no_test_writes_its_own_tolerance():
    found = {p.relative_to(TESTS).as_posix(): literal_tolerances(p.read_text())
             for p in TESTS.rglob("*.py") if p.name not in ("conftest.py", Path(__file__).name)}
    assert {p: hits for p, hits in found.items() if hits} == {}


def test_the_check_sees_a_literal_tolerance():
    assert literal_tolerances("torch.allclose(a, b, atol=1e-6)") == ["atol=1e-6"]
    assert literal_tolerances("pytest.approx(x, rel=.5)") == ["rel=.5"]
    assert literal_tolerances('pytest.approx(x, abs=TOL["float64_exact"])') == []
    assert literal_tolerances("torch.allclose(a, b, rtol=0, atol=TOL[k])") == []


def test_every_entry_is_a_positive_number():
    assert all(isinstance(v, float) and v > 0 for v in TOL.values())
