"""The import structure: no cycle among crl modules, every import down the layer map, and the light imports stay
light (loading an SAE never imports its training code; the offline analyses never import torch).

The graph is read from the source (AST), so imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from crl.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"crl": ROOT / "crl", "crl.envs": ROOT / "envs"}  # envs/ installs as crl.envs

# Lowest first; a module may import its own layer and the ones before it (ARCHITECTURE.md draws the picture).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("crl", "crl.errors", "crl.paths", "crl.progress", "crl.config")),
    ("backends", ("crl.backends",)),
    ("sae_training", ("crl.sae_training",)),
    ("cards", ("crl.cards",)),
    ("envs", ("crl.envs",)),
    ("agent", ("crl.agent",)),
    ("logs", ("crl.logs",)),
    ("run", ("crl.run",)),
    ("analysis", ("crl.analysis",)),
    ("commands", ("crl.commands", "crl.cli")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, top in SOURCES.items():
        for path in top.rglob("*.py"):
            parts = path.relative_to(top).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((prefix, *parts))] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The crl modules `module` imports anywhere in its source, each as the most specific module named."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names += [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _layer(module: str) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p if p == "crl" else module == p or module.startswith(p + ".")
            if hit and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_every_module_has_a_layer():
    missing = sorted(m for m in _graph() if _layer(m) is None)
    assert not missing, f"add these to LAYERS in tests/test_architecture.py (and ARCHITECTURE.md): {missing}"


def test_imports_only_go_down_the_layer_map():
    up = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not up, "upward imports:\n" + "\n".join(up)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_commands_live_in_the_command_layer():
    assert all(target.startswith("crl.commands.") for target in COMMANDS.values())


def _loaded_after_import(module: str) -> list[str]:
    """The modules that importing `module` in a fresh interpreter loads."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("module", ["crl.backends.sae", "crl.backends"])
def test_loading_an_sae_never_imports_training(module):
    loaded = _loaded_after_import(module)
    assert module in loaded
    assert not [m for m in loaded if m.startswith("crl.sae_training")]


def test_reading_feature_cards_never_imports_torch():
    """`crl features show` and the offline report read cards; neither may pay for torch."""
    loaded = _loaded_after_import("crl.cards.store, crl.cards.label, crl.cards.tokens, crl.cards")
    assert "torch" not in loaded and not [m for m in loaded if m.startswith("crl.sae_training")]


def test_offline_analyses_never_import_torch():
    offline = sorted(m for m in _graph() if m.startswith("crl.analysis.offline."))
    loaded = _loaded_after_import(", ".join(offline))
    assert "torch" not in loaded and "crl.envs" not in loaded
