"""The README and docs/ stay true to the code: every relative link and every repository path they
name exists, and every option they show a script with is one that script's parser accepts."""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mushroom.config import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# Paths a run creates, or that lie outside the repository: named in the docs, not shipped.
GENERATED = ("data/", "models/", "reports/", "wandb/", "app/dist", "app/node_modules", "../", ".venv", "/tmp/",
             "deploy/", "finds/", "photos/", "MODEL_DIR", "DIR/")
REPO_DIRS = ("mushroom/", "tests/", "benchmarks/", "configs/", "app/src/", "docs/", "weights/", ".ci/")
SCRIPT = re.compile(r"(?:python|\.venv/bin/python)\s+((?:benchmarks/)?[\w_]+\.py)\b([^\n#`]*)")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def test_the_readme_is_short():
    assert len(_text(PROJECT_ROOT / "README.md").splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_exists(page):
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.name} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_named_exists(page):
    missing = []
    for name in set(re.findall(r"`([^`\s]+)`", _text(page))):
        name = name.rstrip(".,:;)")
        # bare names: scripts, modules and configs (a bare .json or .md is an output a run writes)
        if not (name.startswith(REPO_DIRS) or re.fullmatch(r"[\w-]+\.(py|yaml|txt|js|html)", name)):
            continue
        if name.startswith(GENERATED) or any(c in name for c in "<>*{}|$"):
            continue
        if "/" not in name and not (PROJECT_ROOT / name).exists():
            # a bare file name: somewhere in the repository (mushroom/advice.py named as advice.py is not
            # a path); only root files are checked this way
            if name.endswith(".py") and (PROJECT_ROOT / "mushroom" / name).exists():
                continue
            if not list(PROJECT_ROOT.glob(f"**/{name}")):
                missing.append(name)
            continue
        if "/" in name and not (PROJECT_ROOT / name).exists():
            missing.append(name)
    assert not missing, f"{page.name} names files that do not exist: {sorted(missing)}"


@functools.lru_cache(maxsize=None)
def _options(script: str) -> frozenset[str]:
    out = subprocess.run([sys.executable, script, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-500:]}"
    return frozenset(re.findall(r"(--[a-z][\w-]*)", out.stdout))


def test_every_option_shown_with_a_script_is_accepted():
    shown: dict[str, set[str]] = {}
    for page in PAGES:
        for script, rest in SCRIPT.findall(_text(page)):
            if (PROJECT_ROOT / script).is_file():
                shown.setdefault(script, set()).update(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest))
            else:
                shown.setdefault(script, set()).add("<missing script>")
    assert {"predict.py", "evaluate.py", "download_data.py"} <= set(shown)
    wrong = {script: sorted(opts - _options(script)) for script, opts in shown.items()
             if "<missing script>" in opts or opts - _options(script)}
    assert not wrong, f"options the docs show that the scripts do not accept: {wrong}"
