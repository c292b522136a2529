"""Layers point one way (docs/architecture.md): a module may import from its own layer or any layer
below it, never from a higher one — including imports inside functions, which hide a dependency
from the top of the file but not from this test."""

import ast
from pathlib import Path

import finealign

# lowest first; a module's layer is its top-level name under finealign/
LAYERS = [
    {"errors", "checks", "tokens", "progress", "tables", "devices", "safe_paths", "resources", "kept", "__init__"},
    {"registry"},
    {"kernels"},
    {"aligners", "losses"},
    {"data", "encoders", "cache", "profiling"},
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


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("finealign"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("finealign"))


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for line, module in imports(path):
            target = module.split(".")[1] if "." in module else "__init__"
            if layer_of(target) > layer_of(own):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module} (layer {own} → {target})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_every_package_is_placed():
    names = {
        p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    for name in names:
        layer_of(name)
