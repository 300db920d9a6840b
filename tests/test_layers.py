"""The package's imports flow one way: no import cycle between its modules, and no module imports from a layer
above its own. Read from the source with `ast`, top-level and function-local imports alike."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lib" / "qformer_peft"

# Bottom to top; a module may import from its own layer or any layer below. A name ending in "." is a package
# (every module in it), otherwise one module; the longest match places a module.
LAYERS = [
    ["qformer_peft", "runs", "paper"],                         # package root, run folders, the paper's design
    ["data.", "templates"],                                     # benchmarks, synthetic world, prompt formats
    ["models."],                                                # the InstructBLIP architecture and connectors
    ["config", "peft_setup"],                                   # one run's config; applying a setup with peft
    ["lora_fused", "train", "evaluate", "features", "run_inputs"],            # optimiser loop, scoring, feature cache, a run's data
    ["pretrain.heldin", "pretrain.vision", "pretrain.stages", "pretrain.quality",
     "pretrain.alignment"],                                     # pretraining stages, held-in scores, alignment
    ["engine"],                                                 # run_experiment: one run end to end
    ["engine_cli", "pretrain.", "params", "bench_cuda", "bench_efficiency", "bench",
     "export"],                                                 # base builds, parameter ledger, benches
    ["verdicts", "report_charts", "open_charts", "connector_charts", "scores", "claim", "claims", "connector_study",
     "seed_variance", "open_questions", "claim_ledger", "results",
     "readme_results"],                                         # analysis: verdicts, charts and claims
    ["reruns", "grid", "grid_cells", "workbook", "execute", "schedule"],  # profiles, cells, notebooks' API, running
    ["report"],                                                 # the index page
    ["study"],                                                  # a profile end to end
    ["cli"],                                                    # the command line
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules `path` imports, anywhere in the file (`from . import x` counts as module x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def layer_of(name: str) -> int:
    short = name.removeprefix("qformer_peft.") if name != "qformer_peft" else name
    best = None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            hit = short == entry.rstrip(".") or (entry.endswith(".") and short.startswith(entry))
            if hit and (best is None or len(entry) > best[1]):
                best = (i, len(entry))
    if best is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: imports(p, m, set(files)) for m, p in files.items()}


def test_every_module_has_a_layer(graph):
    for m in graph:
        layer_of(m)


def test_no_module_imports_from_a_layer_above(graph):
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in graph.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(graph):
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for t in graph[node]:
                if t == start:
                    return path + [t]
                if t not in seen:
                    seen.add(t)
                    stack.append((t, path + [t]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    # the reader itself: relative imports resolve, function-local imports count
    pkg = tmp_path / "qformer_peft"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..engine import run\n    from . import b\n")
    (pkg / "sub" / "b.py").write_text("from .a import f\n")
    (pkg / "engine.py").write_text("")
    modules = {"qformer_peft", "qformer_peft.sub", "qformer_peft.sub.a", "qformer_peft.sub.b", "qformer_peft.engine"}
    assert imports(pkg / "sub" / "a.py", "qformer_peft.sub.a", modules) == {"qformer_peft.engine", "qformer_peft.sub.b"}
    assert imports(pkg / "sub" / "b.py", "qformer_peft.sub.b", modules) == {"qformer_peft.sub.a"}
    assert layer_of("qformer_peft.engine") > layer_of("qformer_peft.models.build") > layer_of("qformer_peft.data.records")
