"""The notebook-style example runs against the real server, top to bottom."""

import os
import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "python-client" / "walkthrough.py"


def test_the_walkthrough_example_runs(world):
    env = dict(os.environ, VEIL_URL=world.url)
    done = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "receipt holds: job" in done.stdout and "audit log holds:" in done.stdout
    assert "patients_ci95_low" in done.stdout
