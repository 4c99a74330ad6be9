"""NaN and inf never reach the disk: non-finite settings are refused, meta-training that turns non-finite
stops and keeps the last good checkpoint, non-finite files are refused on load, and undefined statistics
are written as null."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_cases import ARCH, Case, EVAL, SETS, TRAIN, crafted, ids, kept_after_batch_1, poison_batch_2, run_case, write

from metatele import checkpoints, config, train
from metatele.errors import NonFiniteError

CASES = [
    Case("meta_lr_inf_is_refused", ARCH + ["--set", "meta_lr=inf"], 2, "meta_lr must be a number in (0, 10]"),
    Case("meta_lr_overflowing_to_inf_is_refused", ARCH + ["--set", "meta_lr=1e400"], 2, "got inf"),
    Case("meta_lr_that_overflows_float32_is_refused", ARCH + ["--set", "meta_lr=1e38"], 2, "(0, 10]"),
    Case("magnitude_nan_is_refused", ARCH + ["--set", "magnitude=nan"], 2, "finite positive number, got nan"),
    Case("clip_inf_in_toml_is_refused", ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "clip must be a finite positive number, got inf", setup=write("c.toml", "clip = inf\n")),
    Case("nonfinite_meta_parameters_stop_and_keep_the_last_checkpoint", ARCH, 2,
         "meta-parameters became non-finite in batch 2", patch=poison_batch_2, check=kept_after_batch_1),
    Case("nonfinite_tensor_in_a_training_state_is_refused_on_resume", ["train", "--out", "ck", "--resume", *TRAIN], 2, "holds NaN or inf",
         setup=crafted(checkpoints.STATE_FILE, src="partial",
                       tensor_fn=lambda t: t[next(iter(t))].fill_(float("inf")))),
    Case("nan_in_the_history_of_a_training_state_is_refused_on_resume", ["train", "--out", "ck", "--resume", *TRAIN], 2, "history must be",
         setup=crafted(checkpoints.STATE_FILE, meta_fn=lambda m: m["history"][0].update(x=float("nan")),
                       src="partial")),
    Case("nan_weights_in_a_model_are_refused", ["eval", "--checkpoint", "ck", *EVAL], 2, "holds NaN or inf",
         setup=crafted(checkpoints.MODEL_FILE, tensor_fn=lambda t: t[next(iter(t))].view(-1)[0].fill_(float("nan")))),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)


def test_checkpoint_writer_refuses_nan_and_inf(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(NonFiniteError, match="tensor w"):
        checkpoints.save(p, {"w": torch.tensor([1.0, float("nan")])}, {"kind": "test"})
    with pytest.raises(NonFiniteError, match=r"history\[0\].loss"):
        checkpoints.save(p, {"w": torch.zeros(2)}, {"kind": "test", "history": [{"loss": float("inf")}]})
    assert not list(tmp_path.iterdir())


def test_heldout_means_of_all_diverged_tasks_are_stored_as_null(tmp_path):
    """out_scale 1e15 diverges every held-out task: its mean log-loss is undefined (null), never NaN on disk."""
    cfg = config.load(None, SETS[1::2] + ["method=lstm-update", "out_scale=1e15", "trajectories=8"])
    train.run(cfg, tmp_path / "o", progress=False)
    for f in (checkpoints.MODEL_FILE, checkpoints.STATE_FILE):
        _, meta = checkpoints.read(tmp_path / "o" / f)
        last = meta["history"][-1]
        assert last["n_nonfinite_step10"] == 4 and last["log10_loss_mean_step10"] is None
        raw = (tmp_path / "o" / f).read_bytes()[:20000]
        assert b"NaN" not in raw and b"Infinity" not in raw


def test_diverging_trajectories_are_skipped_and_no_nan_is_written(tmp_path):
    cfg = config.load(method="lstm-update", hidden=8, trajectories=16, batch=8, steps=20, unroll=10, eval_every=1,
                      eval_tasks=4, out_scale=1e15)
    run = train.run(cfg, tmp_path / "o", progress=False)
    assert run.progress.skipped_windows >= 1
    model = checkpoints.load_model(tmp_path / "o")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert run.progress.history[-1]["n_nonfinite_step20"] > 0
