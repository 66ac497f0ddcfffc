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
