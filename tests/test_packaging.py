"""Packaging: `envs/` installs as `crl.envs`, and the explicit package list stays complete."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def _on_disk() -> set[str]:
    out = set()
    for top, prefix in (("crl", "crl"), ("envs", "crl.envs")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            out.add(".".join((prefix, *rel)))
    return out


def test_package_list_matches_the_tree():
    assert _declared() == _on_disk(), "update [tool.setuptools] packages in pyproject.toml"


def test_no_module_imports_a_top_level_envs_package():
    offenders = []
    for path in [
        *ROOT.joinpath("crl").rglob("*.py"),
        *ROOT.joinpath("envs").rglob("*.py"),
        *ROOT.joinpath("tests").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "envs" or n.startswith("envs.")]
    assert not offenders, offenders
