"""Run the page's JavaScript (app/src/*.js) under Node from a test: the parity and property tests
of test_app.py and test_advice.py. Under CI=true a missing Node fails the test instead of skipping
it (.ci/run installs Node)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mushroom.config import PROJECT_ROOT

SRC = PROJECT_ROOT / "app" / "src"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need_node() -> str:
    node = shutil.which("node")
    if node is None:
        if IN_CI:
            pytest.fail("node is not installed: .ci/run installs it (apt-get install -y nodejs npm)")
        pytest.skip("node is not installed (apt-get install nodejs npm)")
    return node


def run_node(script: str, payload) -> object:
    """Run an ES module snippet with `input` bound to the JSON payload; its printed JSON."""
    code = ("import fs from 'fs';\n"
            f"const input = JSON.parse(fs.readFileSync(0, 'utf8'));\n{script}\n")
    out = subprocess.run([need_node(), "--input-type=module", "-e", code], input=json.dumps(payload, allow_nan=False),
                         capture_output=True, text=True, cwd=SRC, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)
