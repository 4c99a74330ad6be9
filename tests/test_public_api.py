"""The public face: `import metatele` is light and lazy (PEP 562), every name in `__all__` resolves,
`load_pretrained` explains itself, and the shipped checkpoints are package data of a real (non-editable) install."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import metatele
from metatele import checkpoints
from metatele.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


def test_import_metatele_is_light():
    code = ("import sys, metatele; heavy = [m for m in ('torch', 'numpy', 'matplotlib', 'metatele.checkpoints') "
            "if m in sys.modules]; print(heavy, sorted(metatele.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[] ")


def test_every_public_name_resolves():
    from metatele.methods import adam, chain, sgd
    from metatele.step import rollout
    from metatele.tasks import ClassificationFamily, MixtureFamily, RegressionFamily, TaskBatch, TaskFamily
    from metatele.teleport import Teleporter

    expected = {"TaskFamily": TaskFamily, "TaskBatch": TaskBatch, "RegressionFamily": RegressionFamily,
                "ClassificationFamily": ClassificationFamily, "MixtureFamily": MixtureFamily, "chain": chain,
                "sgd": sgd, "adam": adam, "rollout": rollout, "Teleporter": Teleporter,
                "load_pretrained": checkpoints.load_pretrained, "load_model": checkpoints.load_model}
    for name, obj in expected.items():
        assert name in metatele.__all__ and getattr(metatele, name) is obj
    for name in metatele.__all__:  # including names added by other packages (e.g. metatele.optim)
        assert getattr(metatele, name) is not None
    assert set(metatele.__all__) <= set(dir(metatele))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        metatele.nope  # noqa: B018


@pytest.mark.parametrize("name", ["no-such-optimizer", "checkpoints/lstm-update", "ck/u",
                                  str(ROOT / "checkpoints" / "lstm-update" / "model.safetensors")])
def test_load_pretrained_lists_the_shipped_names_and_points_to_load_model(name):
    shipped = checkpoints.shipped_names()
    assert {"lstm-update", "lstm-update-tele", "any-update-tele"} <= set(shipped)
    with pytest.raises(CheckpointError) as e:
        metatele.load_pretrained(name)
    msg = str(e.value)
    assert repr(name) in msg and all(n in msg for n in shipped) and "load_model(path)" in msg


@pytest.mark.slow
def test_a_non_editable_install_loads_the_shipped_checkpoints(tmp_path):
    """Build and install the package (a wheel, not editable) from a copy of the sources, then, from outside the
    repository, load a shipped model through the installed package data."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "metatele", src / "metatele", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "checkpoints", src / "checkpoints")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=600)
    shipped = sorted(p.parent.name for p in (target / "metatele" / "_shipped").glob("*/model.safetensors"))
    assert shipped == checkpoints.shipped_names()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METATELE_CHECKPOINTS")}
    code = ("import metatele; m = metatele.load_pretrained('lstm-update-tele'); "
            "print(metatele.__file__); print(m.spec.method, sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(target / "metatele"))  # the installed copy, not the repository
    assert out[1].startswith("lstm-update-tele ")
