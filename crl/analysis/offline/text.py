"""Plain-text tables for stdout (`crl curves`, `crl study`'s summary, `crl transfer`'s table, its abstention ablation
and its seeds pooled): one layout, so every command's tables line up the same way."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Each row as a line, the header being the first row: every column padded to its widest cell, two spaces apart,
    trailing spaces cut.

    >>> text_table([["method", "acc"], ["crl", "0.875"], ["none", "0.5"]], indent="  ")
    ['  method  acc', '  crl     0.875', '  none    0.5']
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
