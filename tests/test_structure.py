"""The package's shape, checked from the sources (nothing is imported or run): the mushroom.* import
graph has no cycle, and only modelio spells where a model folder keeps its files."""
import ast
import graphlib
from pathlib import Path

from mushroom.config import PROJECT_ROOT
from mushroom.modelio import ModelFolder

PACKAGE = PROJECT_ROOT / "mushroom"
# Everything that runs against model folders: the package, the scripts, the benchmarks.
SOURCES = sorted([*PACKAGE.glob("*.py"), *PROJECT_ROOT.glob("*.py"), *(PROJECT_ROOT / "benchmarks").glob("*.py")])
LAYOUT_OWNER = PACKAGE / "modelio.py"


def _mushroom_imports(tree: ast.Module) -> set[str]:
    """mushroom modules imported anywhere in the file, function-level imports included: deferring an
    import hides a cycle from Python, not from the reader."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mushroom":
            if node.module == "mushroom":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mushroom."))
    return found


def import_graph() -> dict[str, set[str]]:
    return {path.stem: _mushroom_imports(ast.parse(path.read_text(encoding="utf-8"))) - {path.stem}
            for path in PACKAGE.glob("*.py")}


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "modelio" in graph and "fileio" in graph["modelio"]  # the parser sees imports at all
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert set(order) >= set(graph)


def _strings(tree: ast.Module):
    """(line, text) of every string piece that code uses: docstrings and other bare string
    statements, and argparse help texts, are prose and skipped."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Constant, ast.JoinedStr)):
            skip.update(id(n) for n in ast.walk(node.value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            skip.update(id(n) for n in ast.walk(node.value))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value, node
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values), node


def layout_violations(source: str) -> list[str]:
    """Places in `source` that build a model-folder path themselves instead of asking ModelFolder."""
    tree = ast.parse(source)
    files = (ModelFolder.MODEL, ModelFolder.META, ModelFolder.HISTORY, ModelFolder.QUANTIZE_REPORT,
             ModelFolder.TEMPERATURE, ModelFolder.OPEN_SET)
    folders = (ModelFolder.BACKUP, ModelFolder.QAT, ModelFolder.TFLITE, ModelFolder.OPEN_SET_STATS)
    found = []
    pieces = {id(v) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for v in j.values}
    for line, text, node in _strings(tree):
        if id(node) in pieces:
            continue  # judged as part of its f-string
        if any(name in text for name in files) or any(f"{d}/" in text for d in folders):
            found.append(f"{line}: {text!r}")
        elif isinstance(node, ast.JoinedStr) and text.endswith("}" + ModelFolder.TFLITE_SUFFIX):
            found.append(f"{line}: {text!r} (an exported file's name)")
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in folders:
                    found.append(f"{node.lineno}: / {side.value!r}")
    return found


def test_the_checker_finds_hand_built_paths():
    bad = ('p = folder / "tflite" / f"{fmt}.tflite"\nq = folder / "meta.json"\n'
           'r = sorted(root.glob(f"*/tflite/{fmt}.tflite"))\ns = folder / "qat" / "model.keras"\n')
    assert len(layout_violations(bad)) == 6
    fine = ('"""A docstring may name model.keras and tflite/<fmt>.tflite."""\n'
            'p.add_argument("--x", help="qat/model.keras, for qat_int8")\n'
            'q = ModelFolder(folder).tflite(fmt)\nr = reports / "metrics.json"\ns = dist / "model.tflite"\n')
    assert layout_violations(fine) == []


def test_no_module_outside_modelio_builds_a_model_folder_path():
    assert LAYOUT_OWNER in SOURCES
    found = {path.relative_to(PROJECT_ROOT).as_posix(): layout_violations(path.read_text(encoding="utf-8"))
             for path in SOURCES if path != LAYOUT_OWNER}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"model-folder paths built outside mushroom/modelio.py (use ModelFolder): {found}"
