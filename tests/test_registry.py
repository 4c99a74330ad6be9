"""Open extension points: learned methods and task families registered by name (round trips through JSON and
checkpoints), a user's family and method trained and evaluated through the CLI as a plugin, and the conformance
kit `metatele.testing.check_family` (the project's families pass it; broken families fail it)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metatele import checkpoints, config, step, tasks, train
from metatele.learned import LEARNED, CoordinatewiseSpec, LSTMSpec, build, register_learned, spec_from_dict
from metatele.learned.base import FORMAT1_ORDER
from metatele.tasks import (LAWS, ClassificationFamily, MixtureFamily, RegressionFamily, Symmetry, family_from_dict,
                            register_family)
from metatele.testing import ConformanceError, check_family
from tests.helpers import run_cli

PLUGIN = Path(__file__).resolve().parent / "plugins" / "toy_plugin.py"
SMALL_KEYS = {"widths": [4, 5, 3], "hidden": 6, "magnitude": 0.1, "gate": True, "preprocessing": "rms"}


@pytest.mark.parametrize("name", list(LEARNED))
def test_every_learned_method_round_trips_through_json_and_a_checkpoint(name, tmp_path):
    spec = LEARNED[name].spec.from_config(name, SMALL_KEYS)
    assert type(spec) is LEARNED[name].spec
    d = json.loads(json.dumps(spec.to_dict()))
    if isinstance(spec, (LSTMSpec, CoordinatewiseSpec)):  # the families of 0.2 keep its format-1 layout
        assert list(d) == list(FORMAT1_ORDER)
    assert spec_from_dict(d) == spec
    model = build(spec)
    checkpoints.save_model(tmp_path / "m.safetensors", model)
    loaded = checkpoints.load_model(tmp_path / "m.safetensors")
    assert type(loaded) is type(model) and loaded.spec == spec
    task = tasks.sample([1, 2], widths=(4, 5, 3), n=3)
    a, b = step.rollout(model, task, 3), step.rollout(loaded, task, 3)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


def test_family_variants_are_distinct_classes_without_a_union_spec():
    assert {f.name for f in dataclasses.fields(CoordinatewiseSpec)} == {
        "method", "hidden", "magnitude", "exact", "gate_bias", "teleport_decay"}
    assert "widths" in {f.name for f in dataclasses.fields(LSTMSpec)}
    with pytest.raises(ValueError, match="takes a CoordinatewiseSpec"):
        LSTMSpec(method="any-update", widths=(4, 4, 3), hidden=4)
    # a format-1 key this family has no use for must still hold a valid value
    d = CoordinatewiseSpec(method="any-update", hidden=4).to_dict()
    with pytest.raises(ValueError, match="update_form"):
        spec_from_dict({**d, "update_form": "bogus"})
    with pytest.raises(ValueError, match="unknown field 'eval'"):
        spec_from_dict({**d, "eval": 1})


def test_unknown_and_duplicate_names_are_refused_with_the_registered_ones():
    with pytest.raises(ValueError, match="registered: lstm-lr-tele, lstm-update"):
        spec_from_dict({"method": "nope"})
    with pytest.raises(ValueError, match="unknown task family 'nope'; registered: regression, classification, mixture"):
        family_from_dict({"name": "nope"})
    with pytest.raises(ValueError, match="already registered"):
        register_learned("lstm-update", type(build(LSTMSpec("lstm-update", (3, 3, 3), 2))), LSTMSpec)
    with pytest.raises(ValueError, match="already registered"):
        register_family("regression", RegressionFamily)


FAMILIES = [RegressionFamily(), RegressionFamily((6, 4, 3), 8), RegressionFamily((5, 6, 6, 2), 4, LAWS["teacher"]),
            MixtureFamily((3, 8), (1, 2), ("paper", "normal-init"), 5),
            ClassificationFamily("digits", (64, 16, 10, 10), 12)]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: json.dumps(f.to_dict()))
def test_every_project_family_round_trips_and_passes_the_conformance_kit(family):
    assert family_from_dict(json.loads(json.dumps(family.to_dict()))) == family
    check_family(family)


def test_the_kit_catches_a_wrong_gradient_a_false_symmetry_and_seed_coupling():
    fam = RegressionFamily((5, 6, 3), 4)

    class Wrapped:  # delegates to a real family, breaking one property at a time
        def __init__(self, **broken):
            self.broken, self.name, self.widths, self.symmetry = broken, fam.name, fam.widths, fam.symmetry

        def member(self, seed):
            return self

        def to_dict(self):
            return fam.to_dict()

        def sample(self, seeds, *, dtype=torch.float32, device="cpu"):
            seeds = list(seeds)
            if "coupled" in self.broken:  # every task drawn from its batch's first seed and its index
                seeds = [7 * seeds[0] + i for i in range(len(seeds))]
            task = fam.sample(seeds, dtype=dtype, device=device)
            if "grad" in self.broken:
                def wrong(weights, data, **kw):
                    L, g = type(task).loss_and_grad(task, weights, data, **kw)
                    return L, [1.01 * x for x in g]
                task.loss_and_grad = wrong
            if "symmetry" in self.broken:  # a loss that is not invariant: a penalty on the first layer's norm
                task.loss = lambda W, data: type(task).loss(task, W, data) + W[0].pow(2).sum((1, 2))
            return task

    check_family(Wrapped())  # the wrapper itself conforms
    with pytest.raises(ConformanceError, match="finite differences"):
        check_family(Wrapped(grad=True))
    with pytest.raises(ConformanceError, match="rescaling changed the loss"):
        check_family(Wrapped(symmetry=True))
    with pytest.raises(ConformanceError, match="depend on the other seeds"):
        check_family(Wrapped(coupled=True))


def test_a_plugin_family_passes_the_kit_and_its_method_runs_on_it():
    # in a fresh process: the plugin's registrations would otherwise stay in this one's registries
    script = ("import runpy, torch; from metatele import step; from metatele.learned import LEARNED, build; "
              "from metatele.testing import check_family; "
              f"ns = runpy.run_path({str(PLUGIN)!r}); family = ns['ToyFamily'](); check_family(family); "
              "model = build(LEARNED['toy-lr'].spec.from_config('toy-lr', {})); "
              "traj = step.rollout(model, family.sample([1, 2]), 20); "
              "assert bool((traj.loss[20] < traj.loss[0]).all()), traj.loss; print('ok')")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.slow
def test_a_family_and_a_method_from_a_users_module_train_and_evaluate_through_the_cli(tmp_path):
    common = ["--no-progress", "--plugin", str(PLUGIN), "--set", "task=toy", "--set", "widths=4,6,2",
              "--set", "n=12", "--set", "trajectories=4", "--set", "batch=2", "--set", "steps=10", "--set", "unroll=5",
              "--set", "eval_every=1", "--set", "eval_tasks=2", "--set", "hidden=4"]
    for method in ("toy-lr",):
        ck = tmp_path / method
        r = run_cli("train", "--method", method, "--out", str(ck), "--logdir", str(tmp_path / "runs" / method), *common)
        assert r.returncode == 0, r.stderr
        meta = checkpoints.read(ck / checkpoints.MODEL_FILE)[1]
        assert meta["family"] == {"name": "toy", "widths": [4, 6, 2], "n": 12} and meta["spec"]["method"] == method
        assert len(meta["history"]) == 2
        out = tmp_path / f"eval_{method}"
        r = run_cli("eval", "--plugin", str(PLUGIN), "--checkpoint", str(ck), "--tasks", "3", "--steps", "10",
                    "--no-progress", "--out", str(out), "--logdir", str(tmp_path / "evruns" / method))
        assert r.returncode == 0, r.stderr
        rows = (out / "results.csv").read_text().splitlines()
        assert rows[1].startswith(f"{method},") and len(rows) > 2
    r = run_cli("eval", "--checkpoint", str(tmp_path / "toy-lr"), "--no-progress", "--out", str(tmp_path / "e2"))
    assert r.returncode == 2 and "unknown learned method 'toy-lr'" in r.stderr and "--plugin" in r.stderr, r.stderr
    r = run_cli("train", "--method", "lstm-update-tele", "--out", str(tmp_path / "t"), *common)
    assert r.returncode == 2 and "support only the rescale symmetry" in r.stderr, r.stderr
    assert not (tmp_path / "t").exists()


def test_a_plugin_that_cannot_be_imported_is_one_line_and_exit_2(tmp_path, capsys):
    from metatele import cli
    for plugin in (str(tmp_path / "missing.py"), "no_such_module_here"):
        assert cli.main(["train", "--plugin", plugin, "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"metatele: error: --plugin {plugin}: cannot import it") and err.count("\n") == 1, err
    assert not (tmp_path / "m").exists()


def test_a_run_builds_its_family_and_spec_once_and_checks_each_location_once(tmp_path, monkeypatch):
    calls = {"family": 0, "spec": 0, "location": 0}

    def counting(name, f):
        def wrapped(*a, **kw):
            calls[name] += 1
            return f(*a, **kw)
        return wrapped

    monkeypatch.setattr(config, "family_from_config", counting("family", config.family_from_config))
    monkeypatch.setattr(LSTMSpec, "check", counting("spec", LSTMSpec.check))
    monkeypatch.setattr(train, "check_output_dir", counting("location", train.check_output_dir))
    from metatele import cli
    argv = ["train", "--no-progress", "--method", "lstm-update", "--out", str(tmp_path / "o"), "--logdir",
            str(tmp_path / "r"), "--set", "trajectories=4", "--set", "batch=2", "--set", "steps=10", "--set",
            "hidden=4", "--set", "eval_every=1", "--set", "eval_tasks=2", "--set", "ckpt_every=1"]
    assert cli.main(argv) == 0
    assert calls == {"family": 1, "spec": 1, "location": 2}
