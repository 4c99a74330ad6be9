"""The README a newcomer follows: every Python block runs as written, in order, in a fresh interpreter; it stays
under about 300 lines; its two set-up commands pin torch like CI; its links to docs/results.md resolve."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 300


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.slow
def test_every_python_block_runs_in_order_in_a_fresh_interpreter(tmp_path):
    blocks = _blocks("python")
    assert len(blocks) >= 5
    script = "\n".join(f"# --- README block {i}\n{b}" for i, b in enumerate(blocks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation accuracy" in r.stdout


def test_readme_is_short_and_its_two_setup_commands_pin_torch_as_ci_does():
    assert len(README.read_text().splitlines()) <= MAX_LINES
    setup = [b for b in _blocks("bash") if "pip install" in b]
    assert len(setup) == 2
    assert all("torch==2.13.0" in b for b in setup)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install torch==2\.13\.0 -e \"\.\[dev\]\"", ci)
    assert "metatele compare" in setup[0] and "pytest" in setup[1]


def test_links_to_the_results_resolve():
    results = (ROOT / "docs" / "results.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.*)$", results, flags=re.M)}
    links = re.findall(r"\(docs/results\.md#([^)]+)\)", README.read_text())
    assert links
    missing = [a for a in links if a not in anchors]
    assert not missing, missing
    for target in re.findall(r"\]\(((?:\.\./)?[\w./-]+\.(?:png|md))\)", results):
        assert (ROOT / "docs" / target).resolve().exists(), target
