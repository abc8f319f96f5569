"""The package's import graph: no module imports one that imports it back (counting imports
inside functions, which hide cycles from Python), no import points up a layer, and every module
imports on its own."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dreamer"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def test_no_import_cycles():
    mods = modules()
    graph = {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


# The layers, bottom first: a module may import its own layer's modules and those of the layers
# below it, never one above (each subpackage's docstring says the same).
LAYERS = [
    {"config", "presets", "schema", "yamlio", "xla_flags", "logging"},
    {"core", "envs"},
    {"agents", "replay"},
    {"run"},
    {"bench"},
    {"cli", "args", "doctor", ""},  # "": the package's own __init__
]


def layer_of(name: str) -> int:
    part = name.split(".")[1] if "." in name else ""
    ranks = [i for i, members in enumerate(LAYERS) if part in members]
    assert ranks, f"{name} is in no layer: add its top-level name to LAYERS"
    return ranks[0]


def test_no_import_points_up_a_layer():
    mods = modules()
    upward = [f"{name} (layer {layer_of(name)}) imports {dep} (layer {layer_of(dep)})"
              for name, path in mods.items() for dep in sorted(imports_of(path, set(mods)))
              if layer_of(dep) > layer_of(name)]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_layers_sit_in_their_own_subpackages():
    """core, replay, run and bench are subpackages, each with a docstring naming what it may
    import; nothing sits at the top of the package but the bottom layer and the command line."""
    for part in ("core", "replay", "run", "bench"):
        init = PACKAGE / part / "__init__.py"
        assert init.exists() and "Imports:" in (ast.get_docstring(ast.parse(init.read_text())) or "")
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top <= LAYERS[0] | LAYERS[-1], f"modules outside a layer: {sorted(top - LAYERS[0] - LAYERS[-1])}"


def test_every_module_imports_alone():
    names = sorted(modules())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'dreamer' or m.startswith('dreamer.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr


def layout_entries(readme: str) -> tuple[set[str], set[str]]:
    """README's "Layout" block as (listed module paths, folders listed without their files),
    paths relative to the repository root; nesting is two spaces of indent per level."""
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    files, folders, stack = set(), set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        if not name.endswith(("/", ".py")):
            continue  # a description's second line
        stack = stack[:depth]
        path = "/".join(stack + [name.rstrip("/")])
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            folders.add(path)
        else:
            files.add(path)
    return files, {f for f in folders if not any(p.startswith(f + "/") for p in files)}


def test_readme_layout_lists_every_module():
    """Every module of the package appears in README's "Layout" at its place in the tree (a
    folder listed alone stands for its files), and every module listed exists."""
    root = PACKAGE.parent
    files, folders = layout_entries((root / "README.md").read_text())
    actual = {str(p.relative_to(root)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    covered = {p for p in actual if any(p.startswith(f + "/") for f in folders)}
    assert not files - actual, f"README lists modules that do not exist: {sorted(files - actual)}"
    missing = actual - files - covered
    assert not missing, f"README's Layout does not list: {sorted(missing)}"
