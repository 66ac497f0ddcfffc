"""Workflow jobs pin PyTorch's CPU kernels (AVX2 paths): trained models do not move with the CPU type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medfm_robust.seeding import CPU_KERNEL_PINS, pin_cpu_kernels

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "from medfm_robust.seeding import pin_cpu_kernels; pin_cpu_kernels(); import torch; "
    "print(torch.backends.cpu.get_cpu_capability())"
)


def test_pins_are_defaults_a_user_can_override() -> None:
    env: dict[str, str] = {"MKL_CBWR": "COMPATIBLE"}
    assert pin_cpu_kernels(env) == {**CPU_KERNEL_PINS, "MKL_CBWR": "COMPATIBLE"}
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"


@pytest.mark.parametrize(("preset", "expected"), [(None, "AVX2"), ("default", "DEFAULT")])
def test_torch_takes_the_pinned_kernels(preset: str | None, expected: str) -> None:
    """torch reads the pin when it loads: AVX2 kernels also on an AVX-512 CPU, a user's choice wins."""
    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_PINS}
    env["PYTHONPATH"] = str(REPO / "src")
    if preset:
        env["ATEN_CPU_CAPABILITY"] = preset
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_every_torch_job_pins_before_importing_torch() -> None:
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        text = script.read_text()
        uses_torch = "torch" in text or "medfm_robust.seg" in text or "medfm_robust.vlm" in text
        if not uses_torch:
            continue
        pin = text.find("pin_cpu_kernels()")
        imports = [i for i in (text.find("import torch"), text.find("from medfm_robust.seg"),
                               text.find("from medfm_robust.vlm")) if i >= 0]
        assert 0 <= pin < min(imports), script.name
