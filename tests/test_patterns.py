import pytest

from prunekit.errors import PatternError
from prunekit.patterns import NM, Unstructured, parse_pattern


@pytest.mark.parametrize("text,expected", [
    ("0.5", Unstructured(0.5)), ("50%", Unstructured(0.5)), (0.25, Unstructured(0.25)),
    ("2:4", NM(2, 4)), ("4:8", NM(4, 8)), ("1:4", NM(1, 4)), (" 2 : 4 ", NM(2, 4)),
    ("0", Unstructured(0.0)),
])
def test_parse(text, expected):
    assert parse_pattern(text) == expected


def test_parse_scope():
    assert parse_pattern("0.7", scope="global") == Unstructured(0.7, "global")


def test_nm_sparsity():
    assert NM(2, 4).sparsity == 0.5 and NM(4, 8).sparsity == 0.5 and NM(1, 4).sparsity == 0.75


@pytest.mark.parametrize("bad", ["1.0", "1", "-0.1", "150%", "nan", "abc", "4:4", "5:4", "0:4", "2:"])
def test_parse_rejects(bad):
    with pytest.raises(PatternError) as e:
        parse_pattern(bad)
    assert "\n" not in str(e.value)


def test_bad_scope():
    with pytest.raises(PatternError, match="scope"):
        Unstructured(0.5, "column")


def test_nm_fits():
    NM(2, 4).check_fits(8)
    with pytest.raises(PatternError, match="not divisible by m=4"):
        NM(2, 4).check_fits(10, where="fc1")
