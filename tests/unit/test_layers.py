"""The house's floors: data ← llm ← rag ← training ← bot, and no import cycle between modules.

Every import statement of every product module is read with ``ast`` (top-level, inside functions,
under ``TYPE_CHECKING``: all of them count), resolved to a NightOwl module, and checked against
the floor rule. ``data`` and ``llm`` are the ground floor and import no other NightOwl package;
``rag`` may import ``data`` and ``llm``; ``training`` those and ``rag``; only ``bot`` imports
everything. A platform folder (``bot/telegram``, ``bot/discord``, ``bot/terminal``,
``bot/console``) imports only ``bot.core`` of the bot (and its own folder).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("data", "llm", "rag", "training", "bot")
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "llm": set(),
    "rag": {"data", "llm"},
    "training": {"data", "llm", "rag"},
    "bot": {"data", "llm", "rag", "training"},
}
PLATFORMS = ("bot.telegram", "bot.discord", "bot.terminal", "bot.console")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out[module_name(path, root)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """NightOwl modules that ``name`` imports (resolved to the longest known module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        parts = target.split(".")
        while parts:
            cand = ".".join(parts)
            if cand in known:
                return cand
            parts.pop()
        return None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                up = here[: len(here) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if target.split(".")[0] not in PACKAGES:
                continue
            hit = resolve(target)
            if hit is not None and hit != name:
                found.add(hit)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = product_modules(root)
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(g.items()):
        pkg = mod.split(".")[0]
        for dep in sorted(deps):
            dep_pkg = dep.split(".")[0]
            if dep_pkg != pkg and dep_pkg not in ALLOWED[pkg]:
                bad.append(f"{mod} imports {dep} ({pkg} may import only "
                           f"{sorted(ALLOWED[pkg]) or 'no other package'})")
                continue
            for plat in PLATFORMS:
                inside = mod == plat or mod.startswith(plat + ".")
                if not inside or dep_pkg != "bot":
                    continue
                if not (dep == plat or dep.startswith(plat + ".") or dep == "bot.core"
                        or dep.startswith("bot.core.") or dep == "bot"):
                    bad.append(f"{mod} imports {dep} (a platform folder imports only bot.core)")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _package_imports_of_parents(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` importing its own submodules is not a cycle with them."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}


def test_floors_run_one_way() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(_package_imports_of_parents(graph())) == []


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("rel,text", [
    ("llm/x.py", "from bot.config import Config\n"),
    ("data/x.py", "def f():\n    import rag.base\n"),
    ("training/x.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from bot.core import Core\n"),
    ("rag/x.py", "from ..training import cycle\n"),
    ("bot/telegram/x.py", "from bot.app import run\n"),
])
def test_the_checker_sees_an_upward_import(tmp_path: Path, rel: str, text: str) -> None:
    for pkg in PACKAGES:
        _write(tmp_path, f"{pkg}/__init__.py", "")
    for rel_mod in ("bot/config.py", "bot/core/__init__.py", "bot/app.py",
                    "bot/telegram/__init__.py", "rag/base.py", "training/cycle.py"):
        _write(tmp_path, rel_mod, "")
    _write(tmp_path, rel, text)
    assert upward_imports(graph(tmp_path)), f"{rel} was not flagged"


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        _write(tmp_path, f"{pkg}/__init__.py", "")
    _write(tmp_path, "rag/a.py", "from rag import b\n")
    _write(tmp_path, "rag/b.py", "def f():\n    from rag.a import x\n")
    assert cycles(_package_imports_of_parents(graph(tmp_path))) == [["rag.a", "rag.b"]]
