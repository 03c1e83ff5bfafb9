"""The house rules, checked on the source: stages import only downward, no cycles, no private name crosses modules.

Stages (docs/architecture.md), lowest first; a module may import its own stage or a lower one, never a higher one:

    utils -> data -> core -> {methods, analysis} -> training -> experiments -> viz -> top (cli, __init__, ...)

``methods`` and ``analysis`` share a rank and may not import each other. Lazy imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lnsr_viz"

RANK = {"utils": 0, "data": 1, "core": 2, "methods": 3, "analysis": 3, "training": 4, "experiments": 5, "viz": 6}
TOP = 7  # modules directly in lnsr_viz/: cli, __main__, __init__, testing


def _modname(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_modname(p): p for p in sorted(PKG.rglob("*.py"))}


def _stage(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def _rank(mod: str) -> int:
    if mod == "lnsr_viz.testing":
        return RANK["data"]  # tiny models and toy data (transformers only): usable by every stage from data up
    stage = _stage(mod)
    return RANK[stage] if stage else TOP


def _imports(mod: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every lnsr_viz import of ``mod``, lazy ones included."""
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                b = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(b + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lnsr_viz"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in MODULES:
                    out.append((full, "", node.lineno))
                else:
                    out.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, "", node.lineno) for a in node.names if a.name.startswith("lnsr_viz"))
    return out


EDGES = {m: _imports(m, p) for m, p in MODULES.items()}


def test_the_package_is_subpackages_one_per_stage():
    stages = {d.name for d in PKG.iterdir() if (d / "__init__.py").exists()}
    assert stages == set(RANK), f"stage folders {sorted(stages)} differ from the documented {sorted(RANK)}"
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "testing.py"], top


def test_imports_only_go_downward():
    upward = []
    for mod, imports in EDGES.items():
        for target, _name, line in imports:
            if target == "lnsr_viz":
                continue  # the root's lazy re-exports; test_no_stage_imports_the_package_root covers stages
            src, dst = _rank(mod), _rank(target)
            sideways = src == dst and _stage(mod) is not None and _stage(target) not in (None, _stage(mod))
            if dst > src or sideways:
                upward.append(f"{MODULES[mod].relative_to(PKG.parent)}:{line} imports {target}")
    assert not upward, "imports that go up (or sideways between methods and analysis):\n" + "\n".join(upward)


def test_no_stage_imports_the_package_root():
    # ``from lnsr_viz import X`` inside a stage would import every stage through the lazy root.
    bad = [f"{MODULES[m].relative_to(PKG.parent)}:{line}" for m, imps in EDGES.items() if _stage(m)
           for target, _n, line in imps if target == "lnsr_viz"]
    assert not bad, bad


def test_no_import_cycles():
    graph = {m: {t for t, _n, _l in imps if t in MODULES and t != m and not MODULES[t].name == "__init__.py"}
             for m, imps in EDGES.items() if MODULES[m].name != "__init__.py"}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v in graph and not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            visit(u, [])
    assert not cycles, cycles


def test_no_private_name_crosses_modules():
    private = [f"{MODULES[m].relative_to(PKG.parent)}:{line} imports {target}.{name}"
               for m, imps in EDGES.items() for target, name, line in imps
               if name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)


def test_no_function_over_150_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 150:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


@pytest.mark.parametrize("bad", [("lnsr_viz.core.probe", "lnsr_viz.viz.figures"),
                                 ("lnsr_viz.methods.lnsr", "lnsr_viz.analysis.drift")])
def test_the_rank_rule_itself_refuses_an_upward_or_sideways_edge(bad):
    src, dst = bad
    assert _rank(dst) > _rank(src) or (_rank(dst) == _rank(src) and _stage(dst) != _stage(src))


def test_the_top_level_api_is_small_and_every_name_resolves():
    import lnsr_viz

    assert 15 <= len(lnsr_viz.__all__) <= 25, lnsr_viz.__all__
    assert sorted(dir(lnsr_viz)) == sorted(lnsr_viz.__all__)
    for name in lnsr_viz.__all__:
        obj = getattr(lnsr_viz, name)
        assert getattr(obj, "__name__", name) == name, name
        assert obj.__module__.startswith("lnsr_viz."), (name, obj.__module__)


def test_an_unknown_top_level_name_says_where_to_look():
    import lnsr_viz

    with pytest.raises(AttributeError, match="subpackages"):
        lnsr_viz.summarize  # noqa: B018  (now lnsr_viz.analysis.stats.summarize)


def test_the_docs_and_notebooks_use_only_top_level_names_that_exist():
    import re

    import lnsr_viz

    root = PKG.parent
    names = set(lnsr_viz.__all__)
    unknown: dict[str, set[str]] = {}
    for path in [root / "README.md", root / "docs" / "architecture.md", *sorted((root / "notebooks").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        found = set(re.findall(r"\blv\.([A-Za-z_]\w*)", text))
        for group in re.findall(r"^\s*from lnsr_viz import ([^\n(]+)$", text, flags=re.M):
            found |= {n.strip().split(" as ")[0] for n in group.split(",")}
        found -= {"__file__", "__version__", "cli"}
        if found - names:
            unknown[path.name] = found - names
    assert not unknown, f"names not in lnsr_viz.__all__: {unknown}"
