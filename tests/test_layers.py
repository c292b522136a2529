"""The import graph points one way (docs/architecture.md).

- Layers: a module may import from its own layer or any layer below it, never from a higher one —
  including imports inside functions, which hide a dependency from the top of the file but not
  from this test.
- No circle: no two modules import each other, directly or round a loop (top-level, function-level
  and type-checking imports alike), and no two top-level packages do either, so a loop through a
  shared layer (data → cache → encoders → data, as it once was) fails too.

Every rule is a pure function over a graph, and each is shown to catch a planted violation.
"""

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import finealign

# lowest first; a module's layer is its top-level name under finealign/
LAYERS = [
    {
        "errors",
        "checks",
        "tokens",
        "progress",
        "tables",
        "devices",
        "safe_paths",
        "resources",
        "kept",
        "cost_defaults",
        "__init__",
    },
    {"registry"},
    {"formats", "ann"},  # file formats (feature-cache entries, images) · the FAISS index
    {"kernels"},
    {"aligners", "losses"},
    {"encoders"},
    {"cache"},  # encodes with encoders; feature sources name encoder stages
    {"data", "profiling"},  # the cached dataset reads feature caches; words come from a text tokenizer
    {"search"},
    {"config", "overrides"},
    {"engine"},
    {"sweeps", "testing"},
    {"protocol"},
    {"cli", "__main__"},  # __main__: `python -m finealign` (what torchrun -m launches) is the cli
]
PACKAGE = Path(finealign.__file__).resolve().parent


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if name in members:
            return index
    raise AssertionError(f"finealign.{name} is in no layer: add it to LAYERS and to docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level(module: str) -> str:
    """finealign.kernels.ops → kernels; finealign → __init__."""
    return module.split(".")[1] if "." in module else "__init__"


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> Iterable[tuple[int, str]]:
    """(line, finealign module) of every import in the file; `from pkg import sub` names the
    submodule when `sub` is one."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("finealign"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("finealign"))


def module_graph() -> dict[str, set[str]]:
    return {name: {m for _, m in imports(path) if m != name} for name, path in MODULES.items()}


def package_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to top-level packages (edges inside one package dropped)."""
    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        out.setdefault(top_level(source), set()).update(
            top_level(t) for t in targets if top_level(t) != top_level(source)
        )
    return out


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (each a set of nodes that
    import one another round a loop), sorted; Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


def upward(source: str, target: str) -> bool:
    """`source` (a finealign module) importing `target` points up the layer order."""
    return layer_of(top_level(target)) > layer_of(top_level(source))


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for name, path in MODULES.items():
        for line, module in imports(path):
            if upward(name, module):
                wrong.append(
                    f"{path.relative_to(PACKAGE)}:{line} imports {module} ({top_level(name)} → {top_level(module)})"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    loops = cycles(module_graph())
    assert not loops, "modules that import each other round a loop:\n" + "\n".join(" ↔ ".join(c) for c in loops)


def test_no_import_cycle_between_packages():
    loops = cycles(package_graph(module_graph()))
    assert not loops, "packages that import each other round a loop:\n" + "\n".join(" ↔ ".join(c) for c in loops)


def test_the_checks_catch_planted_cycles_and_the_old_upward_arrows():
    # a loop of three modules, a two-module loop beside an innocent tail, and no loop
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(planted) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "d": {"c"}}) == []
    # the kernels circle as it was: maxsim_triton ↔ ops, sinkhorn_triton → maxsim_triton → ops → sinkhorn_triton
    kernels = "finealign.kernels."
    old = {kernels + "maxsim_triton": {kernels + "ops"}, kernels + "ops": {kernels + "maxsim_triton",
           kernels + "sinkhorn_triton"}, kernels + "sinkhorn_triton": {kernels + "maxsim_triton"}}  # fmt: skip
    assert len(cycles(old)) == 1
    # the data → cache → encoders → data circle is one between packages, not between modules
    shared = {
        "finealign.data.features": {"finealign.cache.format"},
        "finealign.cache.encode": {"finealign.encoders.batches"},
        "finealign.encoders.timm_vision": {"finealign.data.images"},
    }
    assert cycles(shared) == [] and cycles(package_graph(shared)) == [["cache", "data", "encoders"]]
    # ... and each of the arrows that closed it points up the layer order now
    assert upward("finealign.encoders.timm_vision", "finealign.data.images")
    assert upward("finealign.cache.encode", "finealign.data.base")
    assert not upward("finealign.encoders.timm_vision", "finealign.formats.images")
    assert not upward("finealign.aligners.two_stage", "finealign.ann")


def test_every_package_is_placed():
    names = {
        p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    for name in names:
        layer_of(name)
