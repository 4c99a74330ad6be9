"""The one reporting layer: number and CI formats, the compare tables, the TensorBoard writer, the one `evaluate`
with recorders, and NaN/inf never reaching a report on disk."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from metatele import tasks
from metatele.evaluation import compare, report
from metatele.methods import baseline
from metatele.repdyn.probe import RepdynRecorder, task_probe
from metatele.reporting import ci, fmt
from metatele.reporting.tensorboard import Point, write_run
from metatele.step import Trajectory, rollout

NONFINITE = re.compile(r"\b(nan|inf|-inf)\b", re.IGNORECASE)


def test_formats():
    assert fmt(0.012345) == "0.0123" and fmt(None) == "" and fmt(math.nan) == "—" and fmt(math.inf) == "never"
    assert fmt(-math.inf) == "—" and fmt(2e-3, ".1e") == "2.0e-03"
    assert ci(1.0, 0.5, 2.0) == "1 [0.5, 2]"
    assert ci(1.0, math.nan, math.nan) == "1"  # one finite value: no interval
    assert ci(math.nan, 0.0, 1.0, undefined="diverged") == "diverged"
    assert ci(0.1234, 0.1, 0.2, "+.2f") == "+0.12 [+0.10, +0.20]"


def _result(name: str, loss: list[list[float]]) -> compare.Result:
    L = torch.tensor(loss, dtype=torch.float64)
    T = L.shape[0]
    return compare.Result(name, {"lr": 0.1}, Trajectory(L, torch.ones_like(L), torch.linspace(0, 1, T)))


def test_undefined_statistics_never_reach_the_tables(tmp_path):
    """A method whose every task diverged, one with a single finite task, and a healthy one: no nan or inf in
    results.csv or results.md; the undefined cells are empty / "— (n non-finite)"."""
    steps = 11
    ok = [[1.0 / (1 + t), 2.0 / (1 + t), 1.5 / (1 + t)] for t in range(steps)]
    dead = [[1.0, 2.0, 1.5]] + [[math.nan, math.inf, math.nan]] * (steps - 1)
    one = [[1.0, 2.0, 1.5]] + [[0.5, math.nan, math.inf]] * (steps - 1)
    results = [_result("ok", ok), _result("dead", dead), _result("one", one)]
    rows = report.report(results, tmp_path / "runs", tmp_path / "out")
    csv_text = (tmp_path / "out" / "results.csv").read_text()
    md = (tmp_path / "out" / "results.md").read_text()
    assert not NONFINITE.search(csv_text) and not NONFINITE.search(md)
    by = {(r["method"], r["step"]): r for r in rows}
    assert math.isnan(by["dead", 10]["geo_mean"]) and math.isnan(by["one", 10]["geo_ci95_low"])
    dead_line = next(line for line in md.splitlines() if line.startswith("| dead |"))
    assert "— (3 non-finite)" in dead_line
    one_line = next(line for line in md.splitlines() if line.startswith("| one |"))
    assert "0.5 (0.5, 2 non-finite)" in one_line  # the one finite task: its value, no interval
    header, *lines = csv_text.splitlines()
    cells = dict(zip(header.split(","), next(ln for ln in lines if ln.startswith("dead,10,")).split(",")))
    assert cells["geo_mean"] == "" and cells["n_nonfinite"] == "3" and cells["steps_to_0.1x"] == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(report.OUTPUT_FILES)


def test_tensorboard_writer_leaves_out_and_counts_undefined_points(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = [Point("a", 1.0, 0), Point("a", math.nan, 1), Point("a", 3.0, 2), Point("b", math.inf, 0)]
    assert write_run(tmp_path / "run", points, hparams=({"lr": 0.1, "shape": (2, 3)}, {"a": 3.0})) == 2
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(0, 1.0), (2, 3.0)]
    assert "b" not in acc.Tags()["scalars"]


def test_one_evaluate_runs_every_method_on_the_same_tasks_with_recorders():
    task = tasks.sample(range(10**9, 10**9 + 3))
    entries = [compare.Entry(baseline("gd"), {"lr": 3e-4}), compare.Entry(baseline("adam", lr=1e-2), {})]
    plain = compare.evaluate(entries, task, 5, progress=False)
    probed = compare.evaluate(entries, task, 5, progress=False, recorders=[RepdynRecorder(layer=1)])
    for a, b, e in zip(plain, probed, entries):
        assert torch.equal(a.traj.loss, b.traj.loss) and a.records == {}  # recording changes nothing
        probe, callback = task_probe(task, 1)
        rollout(e.method, task, 5, callback)
        rec = b.records["repdyn"]
        assert rec.channels == ("H", "Yd", "w") and rec.values.shape == (3, 6, 3)
        np.testing.assert_array_equal(rec.values, probe.series())


@pytest.mark.parametrize("module, forbidden", [
    ("metatele.evaluation.compare", "metatele.repdyn"),
    ("metatele.evaluation.report", "metatele.repdyn"),
    ("metatele.reporting.plotting", "metatele.checkpoints"),
    ("metatele.reporting.tensorboard", "metatele.checkpoints"),
])
def test_dependencies_point_one_way(module, forbidden):
    """Reporting and evaluation do not import what sits above them (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(any(m.startswith('{forbidden}') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_compare_on_digits_writes_no_nan_or_inf(tmp_path, capsys):
    """Issue 28's case: on digits some learned optimizers diverge on every task by step 30; their undefined
    statistics are empty cells and "— (n non-finite)", never nan or inf."""
    from metatele import cli

    args = ["compare", "--task", "classification", "--dataset", "digits", "--widths", "64,16,10,10", "--tasks", "4",
            "--steps", "30", "--no-progress", "--out", str(tmp_path / "res"), "--logdir", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    csv_text = (tmp_path / "res" / "results.csv").read_text()
    md = (tmp_path / "res" / "results.md").read_text()
    assert not NONFINITE.search(csv_text) and not NONFINITE.search(md)
    assert re.search(r"— \(4 non-finite\)", md)  # the case really arose


def test_tensorboard_records_are_summary_writers(tmp_path):
    """write_run's event file holds the events torch's SummaryWriter writes for the same calls (byte for byte
    where both are given the wall time), with the CRCs of tensorboard's own reader (it checks them)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader, RawEventFileLoader
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_crc
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    from metatele.reporting.tensorboard import masked_crc32c

    rng = np.random.default_rng(0)
    records = [b"", b"a", bytes(8)] + [rng.bytes(int(n)) for n in rng.integers(0, 300, 500)]
    assert masked_crc32c(records).tolist() == [reference_crc(r) for r in records]
    points = [Point(f"eval/t{k}", 1.0 + s * 0.37 - k if (s + k) % 7 else math.nan, s, 1.7e9 + s / 8)
              for s in range(60) for k in range(3)] + [Point("us/x", 1e-30, 123456789, 1.7e9)]
    hp = ({"method": "m", "lr": 0.1, "flag": True, "shape": (2, 3)}, {"final": 1.5})
    finite = sum(math.isfinite(p.value) for p in points)
    assert write_run(tmp_path / "new", points, hparams=hp, layout=report.LAYOUT) == len(points) - finite > 0
    with SummaryWriter(str(tmp_path / "old")) as w:
        for p in points:
            if math.isfinite(p.value):
                w.add_scalar(p.tag, p.value, p.step, walltime=p.walltime)
        for summary in hparams_summaries({k: v if k != "shape" else "(2, 3)" for k, v in hp[0].items()}, hp[1]):
            w.file_writer.add_summary(summary)
        w.add_custom_scalars(report.LAYOUT)
    (new,), (old,) = (tmp_path / "new").iterdir(), (tmp_path / "old").iterdir()
    raw_new, raw_old = list(RawEventFileLoader(str(new)).Load()), list(RawEventFileLoader(str(old)).Load())
    assert len(raw_new) == len(raw_old) == 1 + finite + 3 + 1 and raw_new[1:1 + finite] == raw_old[1:1 + finite]
    events_new, events_old = list(EventFileLoader(str(new)).Load()), list(EventFileLoader(str(old)).Load())
    for e in events_new + events_old:
        e.wall_time = 0.0  # SummaryWriter stamps the header, hparams and layout events with the time of writing
    assert events_new == events_old
