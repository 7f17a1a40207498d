"""`crl.analysis.offline.text`: the one plain-text table layout of `crl curves`, `crl study`'s summary and the
abstention ablation."""

from __future__ import annotations

import doctest

from crl.analysis.offline import text
from crl.analysis.offline.text import text_table


def test_doctests():
    assert doctest.testmod(text).failed == 0


def test_columns_are_as_wide_as_their_widest_cell_two_spaces_apart():
    lines = text_table([("variant", "", "m=1"), ("far_harm", "diff", "-0.2 H"), ("", "abstained", "40%")], "  ")
    assert lines == ["  variant              m=1", "  far_harm  diff       -0.2 H", "            abstained  40%"]
    assert text_table([["only", "a header"]]) == ["only  a header"] and text_table([]) == []
