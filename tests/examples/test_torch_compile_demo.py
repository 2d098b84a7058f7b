"""The ``make demo`` torch.compile script runs, captures every site and matches eager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "torch_compile_demo.py"


@pytest.mark.slow
def test_demo_captures_every_site_and_matches_eager() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("captured as neighborhood_attention") == 2
    assert done.stdout.count("captured as softmax_attention(bias") == 2
    assert done.stdout.count("OK") == 2
