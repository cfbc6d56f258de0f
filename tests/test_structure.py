"""Package structure: no import cycle (function-level imports included), no architecture branch outside
``model/``, and one source for each registry."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "partclipseg"
ARCHITECTURE_CLASSES = {"PartCLIPSeg", "CLIPSegBaseline", "CLIPSegCore"}
# attributes only one architecture has: reading them outside model/ is asking which architecture it is
ARCHITECTURE_INTERNALS = {"object_part_head", "class_head", "decoder", "non_object_embedding", "class_conditions",
                          "baseline_prompts", "is_baseline", "decode_features", "decode_classes"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The partclipseg modules an import statement loads explicitly (parent packages not counted)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "partclipseg"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "partclipseg":
        return []
    out = []
    for alias in node.names:  # "from . import x" may name a submodule
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the modules it imports anywhere in its body (top level, functions, methods)."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(t for t in _resolve(name, node, path.name == "__init__.py") if t in MODULES)
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_lazy_import_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from .weights import load_pretrained\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _resolve("partclipseg.model.partclipseg", ast.parse("from ..weights import x").body[0], False) == \
        ["partclipseg.weights"]
    assert _resolve("partclipseg.predictor", node, False) == ["partclipseg.weights"]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "partclipseg.checkpoint" in graph and graph["partclipseg.model.base"]  # the graph is real
    assert cycles(graph) == []


def test_checkpoint_reading_imports_no_model_code():
    graph = import_graph()
    seen, todo = set(), ["partclipseg.checkpoint"]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    assert not any(m.startswith("partclipseg.model") for m in seen), sorted(seen)


# config and checkpoint sit below the model: they define the config / checkpoint formats, which name the
# architectures (``config.architecture``, the official key tables).
BELOW_MODEL = {"partclipseg.config", "partclipseg.checkpoint"}


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("partclipseg.model") and m not in BELOW_MODEL])
def test_no_architecture_branch_outside_model(module):
    tree = ast.parse(MODULES[module].read_text())
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ARCHITECTURE_CLASSES:
            problems.append(f"line {node.lineno}: names {node.id}")
        elif isinstance(node, ast.alias) and node.name in ARCHITECTURE_CLASSES:
            problems.append(f"imports {node.name}")
        elif (isinstance(node, ast.Attribute) and node.attr in ARCHITECTURE_INTERNALS
              and ast.unparse(node.value).endswith(("model", "net", "module"))):
            problems.append(f"line {node.lineno}: reads .{node.attr}")
        elif isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ("partclipseg", "clipseg")
                                                   for c in [node.left, *node.comparators]):
            problems.append(f"line {node.lineno}: compares with an architecture name")
    assert not problems, f"{module}: " + "; ".join(problems)


def test_registries_agree():
    from partclipseg.cli import build_parser
    from partclipseg.config import ARCHITECTURES
    from partclipseg.data import DATASETS
    from partclipseg.evaluation import PROTOCOLS
    from partclipseg.model import architecture_class, architectures
    from partclipseg.vocabulary import BENCHMARKS

    assert set(architectures()) == set(ARCHITECTURES)
    for name in ARCHITECTURES:
        assert architecture_class(name).model_type == name
    assert tuple(DATASETS) == BENCHMARKS
    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    choices = {a.dest: tuple(a.choices) for a in evaluate._actions if a.choices}
    assert choices["dataset"] == BENCHMARKS and choices["protocol"] == PROTOCOLS


def test_every_architecture_implements_the_interface():
    from partclipseg.model import PartSegmentationModel, architecture_class, architectures

    required = ["init_weights", "prompts", "encode_text_inputs", "encode_image", "decode", "attention_map", "forward",
                "loss", "is_trainable"]
    for name in architectures():
        cls = architecture_class(name)
        assert issubclass(cls, PartSegmentationModel)
        missing = [m for m in required if getattr(cls, m) is getattr(PartSegmentationModel, m)]
        assert not missing, f"{name} does not implement {missing}"
