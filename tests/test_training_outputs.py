"""A training's output directory: nothing written before is lost (refusals, --overwrite, --resume of the
matching state), one training per directory (the lock names its holder; a dead holder's lock is taken over),
stray temporary files of interrupted writes cleaned, and the same config and seed give the same bits."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_cases import (Case, DEAD_PID, EVAL, TRAIN, both, holder_alive, holder_killed, ids, loaded_overwrite,
                       names_holder, no_temp_files, put, refused_before_writing, resumed_to_batch_2, run_case,
                       second_training_refused, ship, strays, strays_cleaned, write)

from metatele import checkpoints, config, train
from metatele.io import LOCK_NAME

CASES = [
    Case("out_holding_a_shipped_model_is_refused", ["train", "--out", "ship", *TRAIN], 2,
         "ship already holds model.safetensors", setup=ship),
    Case("out_holding_a_training_state_is_refused_without_resume", ["train", "--out", "o", *TRAIN], 2,
         "--resume to continue", setup=put("o", "full")),
    Case("overwrite_flag_replaces_it_explicitly", ["train", "--out", "ship", "--overwrite", *TRAIN], 0,
         "done: 16/16", setup=ship, check=loaded_overwrite, may_change=("ship/model.safetensors",)),
    Case("resume_of_the_matching_state_continues", ["train", "--out", "o", "--resume", *TRAIN], 0, "done: 16/16",
         setup=put("o"), check=resumed_to_batch_2,
         may_change=("o/model.safetensors", "o/train_state.safetensors")),
    Case("resume_without_any_state_is_refused", ["train", "--out", "o", "--resume", *TRAIN], 2,
         "holds no training state", check=refused_before_writing("o")),
    Case("resume_with_only_a_model_is_refused", ["train", "--out", "ship", "--resume", *TRAIN], 2,
         "holds no training state", setup=ship),
    Case("resume_and_overwrite_together_are_refused", ["train", "--out", "o", "--resume", "--overwrite", *TRAIN],
         2, "not allowed with argument --resume"),
    Case("lock_held_by_another_process_refuses", ["train", "--out", "o", "--resume", *TRAIN], 2,
         "in use by another training", setup=holder_alive, check=names_holder),
    Case("second_real_training_into_the_same_out_is_refused", [], 2, "in use by another training (PID",
         proc=second_training_refused, check=names_holder),
    Case("stale_lock_of_a_killed_process_is_taken_over", ["train", "--out", "o", "--resume", *TRAIN], 0,
         "done: 16/16", setup=holder_killed, check=resumed_to_batch_2,
         may_change=("o/model.safetensors", "o/train_state.safetensors", f"o/{LOCK_NAME}")),
    Case("stray_temporary_files_are_cleaned", ["train", "--out", "o", "--resume", *TRAIN], 0, "done: 16/16",
         setup=strays, check=strays_cleaned,
         may_change=("o/model.safetensors", "o/train_state.safetensors",
                     f"o/.model.safetensors.{DEAD_PID}.abcd1234.tmp",
                     f"o/.train_state.safetensors.{DEAD_PID}.zz_zz_zz.tmp", "o/.model.safetensors.q1w2e3r4.tmp")),
    Case("stray_temporary_files_in_a_results_folder_are_cleaned", ["eval", "--checkpoint", "ck", *EVAL], 0,
         "wrote res/results.csv", setup=both(put("ck", "full"), write(f"res/.results.csv.{DEAD_PID}.abcd1234.tmp")),
         check=lambda tmp, ctx, out, err: no_temp_files(tmp, ctx, out, err),
         may_change=(f"res/.results.csv.{DEAD_PID}.abcd1234.tmp",)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)


def test_same_config_and_seed_give_bit_identical_checkpoints(tmp_path):
    cfg = config.load(method="lstm-update-tele", hidden=8, trajectories=16, batch=8, steps=20, unroll=10, eval_every=1,
                      eval_tasks=4)
    train.run(cfg, tmp_path / "a", progress=False)
    train.run(cfg, tmp_path / "b", progress=False)
    for f in (checkpoints.MODEL_FILE, checkpoints.STATE_FILE):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
