"""The file system: operating-system errors (full disk, file-size limit, permissions, read-only and kernel
file systems, names too long, FIFOs and devices) are one line and exit 2 with earlier work kept, and output
locations are checked, or refused when empty, before any work."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_cases import (Case, EVAL, TRAIN, before_work, both, enospc, fifo, file_size_limit, ids, no_read,
                       no_temp_files, no_work, put, read_only_dir, refused_before_writing, run_case, write,
                       wrote_nothing)

CASES = [
    Case("full_disk_while_checkpointing_keeps_the_earlier_checkpoint", ["train", "--out", "o", "--resume", *TRAIN],
         2, "No space left on device", setup=put("o"), patch=enospc, check=no_temp_files),
    Case("full_disk_while_writing_results_keeps_the_earlier_results", ["eval", "--checkpoint", "ck", *EVAL], 2,
         "No space left on device", setup=both(put("ck", "full"), write("res/results.csv", "old results\n")),
         patch=enospc, check=no_temp_files),
    Case("file_size_limit_of_the_kernel_efbig", [], 2, "File too large", setup=put("o"), proc=file_size_limit,
         check=no_temp_files),
    Case("read_only_folder_for_out", ["train", "--out", "ro/o", *TRAIN], 2, "Permission denied",
         setup=read_only_dir("ro"), unprivileged=True),
    Case("read_only_folder_for_logdir", ["train", "--out", "o", "--logdir", "ro/tb", *TRAIN], 2,
         "--logdir ro/tb: Permission denied", setup=read_only_dir("ro"), unprivileged=True,
         check=refused_before_writing("o")),
    Case("read_only_folder_for_eval_results", ["eval", "--checkpoint", "ck", "--tasks", "2", "--steps", "2",
                                                  "--no-progress", "--out", "ro/res", "--logdir", "tb"], 2,
         "--out ro/res: Permission denied", setup=both(put("ck", "full"), read_only_dir("ro")), unprivileged=True),
    Case("permission_denied_reading_a_checkpoint", ["eval", "--checkpoint", "ck/model.safetensors", *EVAL], 2,
         "Permission denied", setup=both(put("ck", "full"), no_read("ck/model.safetensors")), unprivileged=True),
    Case("permission_denied_reading_a_config", ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "Permission denied", setup=both(write("c.toml", "steps = 10\n"), no_read("c.toml")), unprivileged=True),
    Case("kernel_file_system_that_refuses_new_files", ["train", "--out", "/sys/metatele-test", *TRAIN], 2,
         "--out /sys/metatele-test"),
    Case("out_that_is_a_file", ["train", "--out", "afile", *TRAIN], 2, "is a file, not a directory",
         setup=write("afile")),
    Case("out_below_a_file", ["train", "--out", "afile/o", *TRAIN], 2, "is a file, not a directory",
         setup=write("afile")),
    Case("logdir_that_is_a_file", ["train", "--out", "o", "--logdir", "afile", *TRAIN], 2,
         "--logdir afile", setup=write("afile"), check=refused_before_writing("o")),
    Case("compare_out_that_is_a_file_before_tuning", ["compare", "--tasks", "2", "--steps", "2", "--no-progress",
                                                         "--out", "afile", "--logdir", "tb"], 2,
         "--out afile", setup=write("afile"), patch=no_work, check=before_work),
    Case("name_too_long_for_out", ["train", "--out", "x" * 300, *TRAIN], 2, "File name too long"),
    Case("name_too_long_for_logdir", ["train", "--out", "o", "--logdir", "d/" + "y" * 300, *TRAIN], 2,
         "longer than 255 bytes"),
    Case("name_too_long_for_repdyn_json", ["repdyn", "--quick", "--json", "z" * 300 + ".json", "--out", "rd"], 2,
         "--json", patch=no_work, check=before_work),
    Case("fifo_as_a_checkpoint_is_refused_at_once", ["eval", "--checkpoint", "pipe", *EVAL], 2,
         "not a regular file", setup=fifo("pipe")),
    Case("fifo_inside_a_checkpoint_directory", ["eval", "--checkpoint", "ck", *EVAL], 2, "not a regular file",
         setup=both(lambda tmp, ctx: (tmp / "ck").mkdir(), fifo("ck/model.safetensors"))),
    Case("device_file_as_a_checkpoint_is_refused_at_once", ["eval", "--checkpoint", "/dev/zero", *EVAL], 2,
         "not a regular file"),
    Case("fifo_as_a_config_is_refused_at_once", ["train", "--out", "o", "--config", "pipe", *TRAIN], 2,
         "not a regular file", setup=fifo("pipe")),
    Case("repdyn_json_that_is_a_directory_before_fitting", ["repdyn", "--quick", "--json", "jdir", "--out", "rd", "--no-progress"], 2, "--json jdir is a directory",
         setup=lambda tmp, ctx: (tmp / "jdir").mkdir(), patch=no_work, check=before_work),
    Case("repdyn_json_below_a_file_before_fitting", ["repdyn", "--quick", "--json", "afile/fits.json", "--out", "rd", "--no-progress"], 2, "is a file",
         setup=write("afile"), patch=no_work, check=before_work),
    Case("repdyn_json_that_is_a_fifo_before_fitting", ["repdyn", "--quick", "--json", "pipe", "--out", "rd", "--no-progress"], 2, "not a regular file",
         setup=fifo("pipe"), patch=no_work, check=before_work),
    Case("repdyn_out_that_is_a_file_before_fitting", ["repdyn", "--quick", "--out", "afile", "--no-progress"], 2,
         "--out afile", setup=write("afile"), patch=no_work, check=before_work),
    # output locations that are empty or blank would mean the current directory: refused before anything
    Case("empty_out_for_train", ["train", "--out", "", *TRAIN], 2, "argument --out: an output location must be a path",
         check=wrote_nothing),
    Case("blank_logdir_for_train", ["train", "--out", "o", "--logdir", "   ", *TRAIN], 2,
         "argument --logdir: an output location must be a path, got '   '", check=wrote_nothing),
    Case("empty_out_for_compare", ["compare", *EVAL, "--out", ""], 2, "argument --out", check=wrote_nothing),
    Case("empty_logdir_for_eval", ["eval", "--checkpoint", "ck", *EVAL, "--logdir", ""], 2, "argument --logdir",
         setup=put("ck", "full")),
    Case("empty_json_for_repdyn", ["repdyn", "--quick", "--json", "", "--out", "rd"], 2, "argument --json",
         check=wrote_nothing),
    Case("empty_out_for_generalization", ["generalization", "--quick", "--out", ""], 2, "argument --out",
         check=wrote_nothing),
    Case("empty_logdir_for_optimizers", ["optimizers", "--quick", "--logdir", ""], 2, "argument --logdir",
         check=wrote_nothing),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)
