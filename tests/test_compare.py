"""`metatele compare`: outputs readable by TensorBoard itself (reader and live server), CSV/MD/PNG, and
the shipped checkpoints beating GD."""
from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.request

from pathlib import Path

import pytest
import torch
from cli_cases import Case, EVAL, cheap_baselines, ids, put, run_case, warned_once
from helpers import HANG, wait_for

from metatele import checkpoints, cli, config, step, tasks, train
from metatele.evaluation import compare, report
from metatele.methods import baseline
from metatele.tasks import seeds

METHOD_RUNS = {"gd", "gd-tuned", "adam-tuned", "gd-teleport", "lstm-update-tele"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cfg = config.load(method="lstm-update-tele", hidden=8, trajectories=8, batch=8, steps=10, eval_every=0)
    train.run(cfg, root / "ck" / "lstm-update-tele", progress=False)
    code = cli.main(["compare", "--checkpoints", str(root / "ck"), "--tasks", "4", "--steps", "12",
                     "--logdir", str(root / "runs"), "--out", str(root / "out"), "--no-progress"])
    assert code == 0
    return root


def test_tables_and_plot(compared):
    out = compared / "out"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} == METHOD_RUNS
    assert {"geo_mean", "geo_ci95_low", "geo_ci95_high", "loss_mean", "loss_ci95_low", "loss_ci95_high", "loss_median",
            "n_tasks", "n_nonfinite", "n_diverged", "n_blowup", "steps_to_0.1x", "sec_per_step"} <= set(rows[0])
    assert {int(r["step"]) for r in rows} == {1, 10, 12}
    assert "| gd-teleport |" in (out / "results.md").read_text()
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_event_files_read_by_tensorboard(compared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in METHOD_RUNS:
        acc = EventAccumulator(str(compared / "runs" / run))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        for t in report.TB_TAGS:
            assert f"eval/{t}" in tags and f"eval_vs_time_us/{t}" in tags
        ev = acc.Scalars("eval/log10_loss_median")
        assert [e.step for e in ev] == list(range(13))
        assert ev[-1].value < ev[0].value  # every method makes progress on these tasks
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(compared / "runs" / "gd-tuned"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert content, "no hparams summary"
    parsed = [plugin_data_pb2.HParamsPluginData.FromString(v) for v in content.values()]
    hp = [p.session_start_info.hparams for p in parsed if p.HasField("session_start_info")][0]
    assert hp["method"].string_value == "gd-tuned" and hp["lr"].number_value > 0
    from tensorboard.plugins.custom_scalar import layout_pb2

    first = EventAccumulator(str(compared / "runs" / "gd"))  # the layout lives in the first run, not in a run "."
    first.Reload()
    (tag,) = first.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout.FromString(first.Tensors(tag)[0].tensor_proto.string_val[0])
    charts = {c.title: c for cat in layout.category for c in cat.chart}
    margin = charts["log10 loss: median with q10–q90"].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == ("eval/log10_loss_median", "eval/log10_loss_q10",
                                                          "eval/log10_loss_q90")
    assert not [f for f in (compared / "runs").iterdir() if f.is_file()]  # no event file at the root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_tensorboard_server_serves_runs_and_tags(compared):
    proc, base = _start_tensorboard(compared / "runs")
    try:
        assert _wait_for_runs(proc, base), "TensorBoard exited before listing every run"
        runs = _get(f"{base}/data/runs")
        tags = _get(f"{base}/data/plugin/scalars/tags")
        assert "eval/loss_mean" in tags["gd"] and "eval/log10_loss_mean" in tags["lstm-update-tele"]
        assert "." not in runs
        points = _get(f"{base}/data/plugin/scalars/scalars?run=gd&tag=eval/loss_mean")
        assert len(points) == 13
    finally:
        proc.terminate()
        proc.wait(timeout=HANG)


def _get(url: str) -> object:
    return json.load(urllib.request.urlopen(url, timeout=HANG))


def _wait_for_runs(proc: subprocess.Popen, base: str) -> bool:
    """Wait until the server answers and lists every method's run (the event), or exits (False)."""
    def listed() -> bool:
        try:
            return METHOD_RUNS <= set(json.load(urllib.request.urlopen(f"{base}/data/runs", timeout=HANG)))
        except OSError:  # not listening yet
            return False
    return wait_for(listed, proc, poll=0.5)


def _start_tensorboard(logdir) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); "
                                             ".ci/run installs it where apt-get exists")
def test_tensorboard_page_in_headless_chromium_shows_every_method_run(compared, tmp_path):
    proc, base = _start_tensorboard(compared / "runs")
    try:
        assert _wait_for_runs(proc, base), "TensorBoard exited before listing every run"
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
                              "--dump-dom", f"{base}/#timeseries"], capture_output=True, text=True, timeout=HANG).stdout
    finally:
        proc.terminate()
        proc.wait(timeout=HANG)
    shown = set(re.findall(r'data-id="defaultExperimentId/([^"]*)"', dom))  # one row per run in the run selector
    assert METHOD_RUNS <= shown, (METHOD_RUNS - shown, len(dom))
    assert "." not in shown


SHIPPED = checkpoints.pretrained_dir()
SHIPPED_METHODS = ("lstm-lr-tele", "lstm-update", "lstm-update-tele")  # the pretrained checkpoints we ship


@pytest.mark.parametrize("name", SHIPPED_METHODS)
def test_pretrained_checkpoints_beat_paper_gd_at_step_30(name):
    path = SHIPPED / name / checkpoints.MODEL_FILE
    assert path.exists(), f"shipped checkpoint missing: {path}"
    model = checkpoints.load_pretrained(name)
    task = tasks.sample(range(seeds.EVAL_FIRST_SEED + 5000, seeds.EVAL_FIRST_SEED + 5016))
    learned = step.rollout(model, task, 30).loss[30]
    gd = step.rollout(baseline("gd"), task, 30).loss[30]
    assert torch.isfinite(learned).all()
    assert learned.mean() < gd.mean() and learned.median() < gd.median()


# ---------------------------------------------------------------- compare's checkpoints and seeds (cli_cases)
CASES = [
    Case("compare_with_a_checkpoint_dir_without_checkpoints_warns", ["compare", "--checkpoints", "empty", *EVAL], 0, "holds no learned checkpoint",
         setup=lambda tmp, ctx: (tmp / "empty").mkdir(), patch=cheap_baselines, check=warned_once),
    Case("compare_with_a_learned_method_missing_warns", ["compare", "--checkpoints", "cks", *EVAL], 0,
         "has no checkpoint for lstm-lr-tele, lstm-update, any-update",
         setup=lambda tmp, ctx: shutil.copytree(ctx["made"]["full"], tmp / "cks" / "lstm-update-tele"),
         patch=cheap_baselines, check=warned_once),
    Case("compare_first_seed_in_the_baseline_tuning_range", ["compare", "--first-seed", "3000000010", *EVAL], 2,
         "overlap the validation range"),
    Case("eval_first_seed_in_the_baseline_tuning_range", ["eval", "--checkpoint", "ck", "--first-seed", "3999999999", *EVAL], 2, "overlap the validation range",
         setup=put("ck", "full")),
    Case("compare_first_seed_in_the_training_range", ["compare", "--first-seed", "5", *EVAL], 2,
         "overlap the training range"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)


# ---------------------------------------------------------------- batched lr tuning
class _Untileable:
    """A task batch that offers no `tile` (a user's own TaskBatch): tuned one lr at a time."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        if name == "tile":
            raise AttributeError(name)
        return getattr(self._task, name)


@pytest.mark.parametrize("kind", ["gd", "adam", "gd-teleport"])
def test_batched_tuning_is_the_one_lr_at_a_time_search(kind, monkeypatch):
    """The whole grid as one batch runs each task as its own rollout at that lr does, to the bit (a diverging lr
    included), so the tuned lr is the same; also in chunks of the grid, and without `tile`."""
    valid = tasks.RegressionFamily((5, 4, 3), 3).sample(range(seeds.VALID_FIRST_SEED, seeds.VALID_FIRST_SEED + 3))
    grid = (1e-3, 1e-2, 0.1, 10.0)
    make = lambda lr: baseline(kind, lr=lr)  # noqa: E731
    alone = [step.rollout(make(lr), valid, 12).loss for lr in grid]
    lrs = torch.tensor(grid).repeat_interleave(3)
    together = step.rollout(make(lrs), valid.tile(len(grid)), 12).loss
    torch.testing.assert_close(together, torch.cat(alone, dim=1), rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(alone[0][-1]).all() and (kind == "adam" or not torch.isfinite(alone[-1][-1]).any())  # GD at 10 diverges
    best = min((compare._score(L[-1]), lr) for L, lr in zip(alone, grid))[1]
    batches = []
    monkeypatch.setattr(compare, "rollout", lambda m, task, n: batches.append(len(task.seeds)) or step.rollout(m, task, n))
    assert compare.tune(make, grid, valid, 12) == best and batches == [12]
    assert compare.tune(make, grid, _Untileable(valid), 12) == best and batches[1:] == [3] * 4
    monkeypatch.setattr(compare, "GRID_BATCH_WEIGHTS", 3 * (20 + 12) * 3)  # three lrs' copies per rollout
    assert compare.tune(make, grid, valid, 12) == best and batches[5:] == [9, 3]


def test_batched_tuning_on_classification():
    valid = tasks.ClassificationFamily("digits", (64, 8, 10), batch_size=5).sample(range(seeds.VALID_FIRST_SEED,
                                                                                        seeds.VALID_FIRST_SEED + 2))
    grid = (1e-2, 1.0)
    alone = [step.rollout(baseline("adam", lr=lr), valid, 6).loss for lr in grid]
    together = step.rollout(baseline("adam", lr=torch.tensor(grid).repeat_interleave(2)), valid.tile(2), 6).loss
    assert torch.equal(together, torch.cat(alone, dim=1))
