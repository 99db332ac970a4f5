"""The layering of the repository: imports point downwards only (dassl <- mmpt <- trainers / datasets <- tools),
there are no import cycles, and `import mmpt` stays light."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dassl", "mmpt", "trainers", "datasets")
# Known exception, to be removed: the toy backbone (mmpt.toy_clip, loaded by mmpt.clip_backbone for "toy-ViT")
# holds its own pretraining and reads the toy world's definitions from mmpt.data.toy_world.
KNOWN_TOOLING_IMPORTS = ("mmpt.toy_clip",)


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    """{module name: path} of every module of the repository's packages."""
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def imported_names(path):
    """Absolute names of the modules (or module attributes) that `path` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def imports_of(path, known):
    return {name for name in imported_names(path) if name in known}


def test_no_upward_imports():
    known = modules()
    for name, path in known.items():
        top = {imported.split(".")[0] for imported in imported_names(path)}
        if name.startswith("dassl"):
            assert not top & {"mmpt", "trainers", "datasets", "benchmarks", "tests"}, name
        if name.startswith("mmpt"):
            assert not top & {"trainers", "datasets", "benchmarks", "tests"}, name
        if name.count(".") <= 1 and name.startswith("mmpt") and not name.startswith(("mmpt.experiments", "mmpt.data")):
            # the library's top level knows nothing of its tooling (the python -m shims are the tooling's)
            tooling = {i for i in imported_names(path) if i.startswith(("mmpt.experiments", "mmpt.data"))}
            assert not tooling or name in ("mmpt.sweep", "mmpt.results", "mmpt.demo", "mmpt.data_prep") + \
                KNOWN_TOOLING_IMPORTS, name
        if name.startswith("trainers"):
            assert not top & {"datasets", "benchmarks", "tests"}, name


def test_no_import_cycles():
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    # a module importing its own package (whose __init__ imports the module back) is how packages re-export; a
    # cycle is any other way back to a module
    for name in graph:
        graph[name] = {target for target in graph[name] if target != name and not name.startswith(target + ".")}
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_importing_mmpt_loads_no_method_and_no_torch():
    code = ("import sys, pkgutil, importlib, mmpt\n"
            "assert 'torch' not in sys.modules, 'import mmpt loads torch'\n"
            "for info in pkgutil.walk_packages(mmpt.__path__, 'mmpt.'):\n"
            "    importlib.import_module(info.name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trainers', 'datasets', 'benchmarks', 'tests'))\n"
            "assert not bad, bad\n"
            "assert not mmpt.declared_methods()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_library_never_imports_the_repository_scripts_nor_edits_sys_path():
    """mmpt finds the method package by module name (mmpt.experiments.config.import_method_package), never through
    sys.path edits, and never imports train.py or parse_test_res.py (their code lives in mmpt.experiments)."""
    scripts = {path.stem for path in REPO.glob("*.py")}  # train, parse_test_res, setup
    assert {"train", "parse_test_res"} <= scripts
    for path in sorted((REPO / "mmpt").rglob("*.py")):
        tops = {name.split(".")[0] for name in imported_names(path)}
        assert not tops & scripts, (path, tops & scripts)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} touches sys.path")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in \
                    ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in scripts:
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} imports the script {node.args[0].value!r}")


def test_the_method_package_is_imported_by_name_with_a_one_line_error_elsewhere(tmp_path):
    """From a folder where `trainers` is not importable, the tooling says how to fix it in one line."""
    code = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', %r)]\n"
            "from dassl.errors import ConfigError\n"
            "from mmpt.experiments import layout\n"
            "try:\n    layout.declared_methods()\nexcept ConfigError as e:\n    print(e)\n") % str(REPO)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "elsewhere")}
    import os

    (tmp_path / "elsewhere").mkdir()
    os.symlink(REPO / "mmpt", tmp_path / "elsewhere" / "mmpt")
    os.symlink(REPO / "dassl", tmp_path / "elsewhere" / "dassl")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.stdout.strip() == ("cannot import the method package 'trainers': run from the repository root or "
                                     "put the repository on PYTHONPATH"), result.stdout + result.stderr[-2000:]


# the prompt mechanics, bottom up: each module imports only the ones before it (and torch); the contract
# (mmpt.prompted_clip) sits on top of the encoders, and methods never reach below the encoders' block mechanics
PROMPT_MECHANICS = ("mmpt.towers", "mmpt.blocks", "mmpt.frozen_blocks", "mmpt.shared_prefix", "mmpt.encoders",
                    "mmpt.prompted_clip")


def test_prompt_mechanics_are_layered():
    known = modules()
    for position, name in enumerate(PROMPT_MECHANICS):
        repository_imports = {i for i in imported_names(known[name]) if i.split(".")[0] in PACKAGES}
        allowed = set(PROMPT_MECHANICS[:position]) | ({"dassl.utils"} if name == "mmpt.prompted_clip" else set())
        outside = {i for i in repository_imports if not any(i == a or i.startswith(a + ".") for a in allowed)}
        assert not outside, (name, sorted(outside))
    for name, path in known.items():
        if name.startswith("trainers"):
            assert not {i for i in imported_names(path) if i.startswith("mmpt.shared_prefix")}, name
