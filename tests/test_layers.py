"""The package layers point one way: `lowbit` -> `lowbit.runtime` -> `lowbit.formats`.

The runtime is what an app embeds, so it must stay importable without the converter's and the
server's dependencies; the check reads every module's imports (module level and inside functions)
with `ast`, so a wrong-way import fails here before it ships.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package folder -> (its dotted name, the lowbit packages it may import)
LAYERS = {
    "formats": ("lowbit.formats", ("lowbit.formats",)),
    "runtime": ("lowbit.runtime", ("lowbit.runtime", "lowbit.formats")),
}
# never imported by the runtime or the format, anywhere (converter-, server- and test-only)
HEAVY = ("torch", "transformers", "safetensors", "click", "gguf", "huggingface_hub", "starlette", "uvicorn")
# imported only inside the function that needs it (a chat template being rendered): jinja2 is
# loaded by `lowbit.runtime.chat_template` alone, which the others import where they render
LAZY = ("jinja2", "lowbit.runtime.chat_template")
LAZY_OWNER = "lowbit.runtime.chat_template"


def imported_names(source: str, module: str) -> list[tuple[str, bool]]:
    """(absolute module name, at module level?) for each import in `source`."""
    tree = ast.parse(source)
    top = set(map(id, tree.body))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            found.append((base, id(node) in top))
    return found


def layer_violations(source: str, module: str, allowed: tuple[str, ...]) -> list[str]:
    """Why `source` (the text of `module`) breaks its layer, one line per import."""
    problems = []
    for name, module_level in imported_names(source, module):
        root = name.split(".")[0]
        lazy = any(name == x or name.startswith(x + ".") for x in LAZY)
        if name.startswith("lowbit") and not any(name == a or name.startswith(a + ".") for a in allowed):
            problems.append(f"{module} imports {name} (allowed: {', '.join(allowed)})")
        elif root in HEAVY:
            problems.append(f"{module} imports {name} (the runtime must not need it)")
        elif lazy and module_level and module != LAZY_OWNER and name != module:
            problems.append(f"{module} imports {name} at module level (import it where it is used)")
    return problems


def _modules():
    for folder, (package, allowed) in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield path, ".".join([package, *parts]), allowed


def test_every_runtime_and_format_module_imports_only_downwards():
    problems = []
    for path, module, allowed in _modules():
        problems += layer_violations(path.read_text(encoding="utf-8"), module, allowed)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source, module, expected",
    [
        ("from lowbit.errors import LowbitError\n", "lowbit.runtime.sampling", "imports lowbit.errors"),
        ("from lowbit.runtime.model import Transformer\n", "lowbit.formats.reader", "imports lowbit.runtime.model"),
        ("def f():\n    from ...convert import converter\n", "lowbit.runtime.kernels.q8", "imports lowbit.convert"),
        ("import torch\n", "lowbit.runtime.linear", "imports torch"),
        ("import jinja2\n", "lowbit.runtime.tokenizer", "at module level"),
        ("from lowbit.runtime.chat_template import select_template\n", "lowbit.runtime.llm", "at module level"),
    ],
)
def test_a_wrong_way_import_is_caught(source, module, expected):
    allowed = LAYERS[module.split(".")[1]][1]
    problems = layer_violations(source, module, allowed)
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_right_way_import_passes():
    source = "from lowbit.formats import LowbitReader\nfrom .kernels import jit\n\ndef f():\n    import jinja2\n"
    assert layer_violations(source, "lowbit.runtime.model", LAYERS["runtime"][1]) == []


def test_importing_the_runtime_loads_none_of_the_heavy_packages():
    code = (
        "import sys, lowbit.runtime, lowbit.formats\n"
        "from lowbit.runtime import llm, model, tokenizer, sampling, session, kv_cache  # noqa\n"
        f"print(' '.join(m for m in {HEAVY + LAZY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing lowbit.runtime also imported: {out.stdout.strip()}"
