"""`autocompress.data` stays layered: its modules import each other one way only, never a private name,
and the public names other packages use stay where they import them from."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import autocompress.data

DATA = Path(autocompress.data.__file__).parent
MODULES = sorted(p.stem for p in DATA.glob("*.py") if p.stem != "__init__")


def relative_imports(module: str):
    """(sibling module, imported names, line) for every relative import in `module`, lazy ones included."""
    tree = ast.parse((DATA / f"{module}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        names = [a.name for a in node.names]
        if node.level == 1 and node.module is None:  # from . import x, y
            for name in names:
                yield name, [], node.lineno
        else:
            sibling = node.module.split(".")[0] if node.level == 1 else None
            yield sibling, names, node.lineno


def sibling_graph() -> dict[str, set[str]]:
    return {m: {s for s, _, _ in relative_imports(m) if s in MODULES} for m in MODULES}


def test_data_modules_import_each_other_one_way():
    graph = sibling_graph()
    done: set[str] = set()

    def visit(module, path):
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail("import circle in autocompress.data: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in MODULES:
        visit(module, [])
    assert graph["batch"] == set() and graph["folder"] == set()  # the shared bottom layer


def test_no_private_name_is_imported_from_another_module():
    found = [f"{m}.py:{line} imports {name} from {sibling or 'a parent package'}"
             for m in [*MODULES, "__init__"] for sibling, names, line in relative_imports(m)
             for name in names if name.startswith("_")]
    assert not found


ISOLATED_IMPORTS = """
import importlib, importlib.util, sys, types
location = importlib.util.find_spec("autocompress.data").submodule_search_locations
failures = []
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "autocompress.data" or n.startswith("autocompress.data.")]:
        del sys.modules[name]
    package = types.ModuleType("autocompress.data")  # the package without its __init__ imports
    package.__path__, package.__package__ = list(location), "autocompress.data"
    sys.modules["autocompress.data"] = package
    try:
        importlib.import_module("autocompress.data." + module)
    except Exception as err:
        failures.append(f"{module}: {type(err).__name__}: {err}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_each_module_imports_on_its_own():
    """Every module imports first, in a fresh interpreter, without the package __init__ loading the rest."""
    result = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *MODULES], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_public_names_stay_importable():
    data = importlib.import_module("autocompress.data")
    assert sorted(data.__all__) == sorted(["Batch", "FeedSource", "to_numpy", "read_dataset", "write_dataset",
                                           "write_source", "write_image_list", "load_dataset_yaml",
                                           "Preprocess", "DATASET_FILE"])
    for name in data.__all__:
        assert getattr(data, name) is not None
    dataset = importlib.import_module("autocompress.data.dataset")
    for name in ("read_dataset", "write_dataset", "write_source", "load_dataset_yaml", "DATASET_FILE"):
        assert getattr(dataset, name) is getattr(data, name)
    source = importlib.import_module("autocompress.data.source")
    assert source.FeedSource is data.FeedSource and callable(source.BatchConverter)
    assert callable(importlib.import_module("autocompress.data.plugin").load_plugin)
