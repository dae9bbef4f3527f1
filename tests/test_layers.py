"""Layers point one way (docs/architecture.md), and the command's help loads no torch."""

import ast
import inspect
import subprocess
import sys
import typing
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cnl"
# Each package may import its own modules and those of lower layers, never of a higher one.
LAYERS = {
    "cnl.lazy": 0,
    "cnl.nn": 1,
    "cnl.data": 1,
    "cnl.models": 2,
    "cnl.engine": 3,
    "cnl.analysis": 4,
    "cnl.demo": 5,
    "cnl.export": 5,
    "cnl.timm_models": 5,
    "cnl.cli": 6,
    "cnl.__main__": 7,
    "cnl": 0,  # __version__; the package's other names are imported on first use (cnl.lazy)
}


def layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rpartition(".")[0]
    return LAYERS[module]


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name == "cnl" or name.startswith("cnl.")]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The one arrow up: the package root registers our models in timm once timm is imported
# (before or after cnl), by loading timm with timm's own loader and then cnl.timm_models.
REGISTRATION = "cnl imports cnl.timm_models"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(SOURCE.rglob("*.py")):
        importer = module_name(path)
        for imported in imports_of(path):
            if layer(imported) > layer(importer):
                upward.append(f"{importer} imports {imported}")
    assert [arrow for arrow in upward if arrow != REGISTRATION] == []
    assert "import_module(" not in (SOURCE / "__init__.py").read_text()  # no arrow hidden in a string


def test_engine_imports_nothing_from_analysis_or_the_command():
    for path in (SOURCE / "engine").rglob("*.py"):
        assert not [m for m in imports_of(path) if m.startswith(("cnl.analysis", "cnl.cli"))], path


def test_help_of_every_command_loads_no_torch():
    commands = [[], ["train"], ["eval"], ["predict"], ["ablate"], ["demo"], ["profile"], ["list-models"], ["bench"],
                ["attention"], ["report"], ["export"], ["data"], ["data", "synth"], ["data", "check"]]  # fmt: skip
    script = (
        "import sys\nfrom cnl.cli import main\n"
        f"for argv in {[c + ['--help'] for c in commands]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_import_cnl_registers_the_models_in_timm_imported_before_or_after():
    scripts = {
        order: f"{order}\nprint(timm.is_model('resnet50_cnl5'), 'torch' in __import__('sys').modules)"
        for order in ("import cnl, timm", "import timm, cnl")
    }
    scripts["cnl alone"] = "import sys, cnl; print('torch' in sys.modules)"
    answers = {order: out.split() for order, out in side_by_side(scripts).items()}
    registered = ["True", "True"]  # the names in timm; torch imported with them
    assert answers == {"import cnl, timm": registered, "import timm, cnl": registered, "cnl alone": ["False"]}


def side_by_side(scripts: dict[str, str]) -> dict[str, str]:
    """The standard output of each ``python -c`` script, the interpreters started together
    (each is a fresh import of torch: seconds, mostly on one core)."""
    started = {name: subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
               for name, script in scripts.items()}  # fmt: skip
    outputs = {name: process.communicate()[0] for name, process in started.items()}
    assert all(process.returncode == 0 for process in started.values()), outputs
    return outputs


# --- errors: a user's mistake or a bug --------------------------------------------------


def raised_names(path: Path) -> list[tuple[str, int]]:
    """``(ExceptionClass, line)`` of every ``raise Name(...)`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            found.append((node.exc.func.id, node.lineno))
    return found


def test_every_error_cnl_raises_on_purpose_is_a_user_error():
    import importlib

    from cnl.errors import UserError

    # Not errors: a signal that ends a run, and a missing attribute of a lazy package.
    allowed = {"RunInterrupted", "Terminated", "AttributeError"}
    others = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        module = importlib.import_module(module_name(path))
        for name, line in raised_names(path):
            kind = getattr(module, name, None) or getattr(__import__("builtins"), name, None)
            if inspect.isfunction(kind):  # a function that builds the error: what it returns
                kind = typing.get_type_hints(kind).get("return")
            if name not in allowed and not (isinstance(kind, type) and issubclass(kind, UserError)):
                others.append(f"{path.relative_to(SOURCE)}:{line} raises {name}")
    assert others == []


def test_a_bug_shows_its_traceback_and_exits_1_a_mistake_one_line_and_2(tmp_path):
    bug = (
        "import sys\nimport cnl.cli as cli\n"
        "def broken(args):\n    return {}['missing']\n"
        "cli.cmd_list_models = broken\nsys.argv = ['cnl', 'list-models']\ncli.run()\n"
    )
    done = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" in done.stderr and "KeyError: 'missing'" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "cnl", "eval", "--checkpoint", str(tmp_path / "nowhere.pt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"cnl eval: error: checkpoint {tmp_path / 'nowhere.pt'} does not exist"


def test_no_function_in_the_engine_is_longer_than_60_lines():
    long = []
    for path in sorted((SOURCE / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
