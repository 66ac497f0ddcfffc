"""Import layering (issue 16): ``medfm_robust.metrics`` is a leaf, loading nothing from ``vlm`` or ``seg``."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import medfm_robust.metrics

METRICS_MODULES = sorted(
    ["medfm_robust.metrics"]
    + [f"medfm_robust.metrics.{m.name}" for m in pkgutil.iter_modules(medfm_robust.metrics.__path__)]
)


@pytest.mark.parametrize("module", METRICS_MODULES)
def test_metrics_modules_load_no_vlm_or_seg_module(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "print(' '.join(sorted(m for m in sys.modules "
        "if m.startswith(('medfm_robust.vlm', 'medfm_robust.seg')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} loads {out.stdout.strip()}"


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_rooms_stay_small() -> None:
    """Issue 16 requirement 4: no library module over 400 lines, no function over 60 (counted with their
    docstrings; ``ast`` end lines, so decorators and blank lines after the body are not counted)."""
    import ast
    from pathlib import Path

    root = Path(medfm_robust.metrics.__file__).resolve().parents[1]
    too_big = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(root)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_big.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    assert not too_big, "\n".join(too_big)
