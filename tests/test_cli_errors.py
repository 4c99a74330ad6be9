"""Bad command-line values (ranges, types, choices, seeds, the limits of checks.py, option prefixes): one line
naming the problem, exit code 2, no traceback, before any work."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_cases import ARCH, Case, EVAL, TRAIN, ids, put, run_case, write
from helpers import run_cli

from metatele import cli
from metatele.tasks import seeds

TINY = ["--set", "trajectories=8", "--set", "batch=8", "--set", "steps=10", "--set", "hidden=8"]


def one_line_error(capsys, argv, needle):
    with pytest.raises(SystemExit) as ei:
        raise SystemExit(cli.main(argv))
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and needle in err, err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--out", "X", "--set", "steps=0"], "steps must be in [1, 10000000], got 0"),
    (["train", "--out", "X", "--set", "trajectories=-3"], "trajectories must be in [1, 10000000], got -3"),
    (["compare", "--tasks", "0"], "expected an integer in [1, 10000]"),
    (["compare", "--steps", "-5"], "expected an integer in [1, 10000000]"),
    (["eval", "--checkpoint", "x", "--tasks", "0"], "expected an integer in [1, 10000]"),
    (["train", "--out", "X", "--method", "lstm-magic"], "unknown method 'lstm-magic'"),
    (["train", "--out", "X", "--set", "method=lstm-magic"], "unknown method"),
    (["train", "--out", "X", "--config", "/nonexistent/cfg.toml"], "config file not found"),
    (["train", "--out", "X", "--set", "learning_rate=3"], "unknown config key"),
    (["train", "--out", "X", "--set", "steps=ten"], "expects int"),
    (["train", "--out", "X", "--set", "exact=maybe"], "expects bool"),
    (["train", "--out", "X", "--set", "widths=10,20,20", "--set", "n=20"], "exact group action"),
    (["train", "--out", "X", "--set", "steps=25", "--set", "unroll=10"], "multiple of unroll"),
    (["compare", "--first-seed", "5"], "overlap the training range"),
    (["eval", "--checkpoint", "x", "--first-seed", str(seeds.TRAIN_SEEDS.stop - 3)], "overlap the training range"),
    (["compare", "--device", "cuda"], "CUDA is not available"),
    (["train", "--out", "X", "--device", "cuda"], "CUDA is not available"),
])
def test_bad_values_give_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, argv, needle)


def test_unreadable_config(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "o"), "--config", str(bad)], "not valid TOML")
    bad.write_bytes(b"\xff\xfe\x00garbage")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "o"), "--config", str(bad)], "cannot read config")


def test_real_process_prints_no_traceback(tmp_path):
    r = run_cli("train", "--out", str(tmp_path / "o"), "--set", "steps=0", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_refuses_to_overwrite_without_resume(capsys, tmp_path):
    out = str(tmp_path / "o")
    assert cli.main(["train", "--out", out, "--no-progress", "--logdir", str(tmp_path / "runs"), *TINY]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["train", "--out", out, "--no-progress", *TINY], "--resume")
    one_line_error(capsys, ["train", "--out", out, "--no-progress", "--resume", *TINY, "--set", "meta_lr=0.5"],
                   "config differs from the training state")


# ---------------------------------------------------------------- the table (cli_cases)
CASES = [
    Case("seed_out_of_range_states_the_range", ARCH + ["--set", "seed=100"], 2, "seed must be in [0, 99]"),
    Case("negative_seed_states_the_range", ARCH + ["--set", "seed=-1"], 2, "seed must be in [0, 99]"),
    Case("trajectories_above_the_per_seed_stride", ARCH + ["--set", "trajectories=10000001"], 2,
         "trajectories must be in [1, 10000000]"),
    Case("first_seed_2_63_minus_1_is_accepted", ["eval", "--checkpoint", "ck", "--first-seed", str(2**63 - 1), "--tasks", "1", "--steps", "1",
          "--no-progress", "--out", "res", "--logdir", "tb"], 0, "| lstm-update-tele |", setup=put("ck", "full")),
    Case("first_seed_range_end_beyond_2_63_minus_1", ["eval", "--checkpoint", "ck", "--first-seed", str(2**63 - 1), *EVAL], 2, "2^63−1", setup=put("ck", "full")),
    Case("first_seed_2_63_is_refused", ["compare", "--first-seed", str(2**63), *EVAL], 2,
         f"expected an integer in [0, {2**63 - 1}]"),
    Case("hidden_too_large", ARCH + ["--set", "hidden=200000"], 2, "hidden must be in [1, 4096]"),
    Case("width_too_large", ARCH + ["--set", "widths=20,5000,20"], 2, "each of widths must be"),
    Case("widths_whose_meta_optimizer_would_exhaust_memory", ARCH + ["--method", "lstm-update", "--set", "widths=784,4000,10"], 2, "above the limit of 1e+08"),
    Case("too_many_layers", ARCH + ["--set", "widths=" + ",".join(["4"] * 20)], 2, "3 to 17 layer widths"),
    Case("mixture_law_that_does_not_exist", ARCH + ["--set", "task=mixture", "--set", "laws=paper,bogus"], 2,
         "unknown laws entry 'bogus'"),
    Case("mixture_width_range_reversed", ARCH + ["--set", "task=mixture", "--set", "width_range=48,8"], 2,
         "low ≤ high"),
    Case("device_other_than_cpu_cuda_cuda_n", ARCH + ["--device", "gpu0"], 2,
         "--device must be cpu, cuda or cuda:N"),
    Case("device_cuda_with_a_bad_index", ["compare", "--device", "cuda:-1", *EVAL], 2,
         "--device must be cpu, cuda or cuda:N"),
    Case("float_for_an_int_in_widths_is_not_truncated", ARCH + ["--set", "widths=[20.7,20,20]"], 2,
         "expects a list of int"),
    Case("float_for_an_int_in_toml_is_not_truncated", ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "expects int, got 100.0", setup=write("c.toml", "steps = 100.0\n")),
    Case("float_for_an_int_on_the_command_line", ["compare", "--tasks", "2.5", *EVAL[2:]], 2,
         "expected an integer"),
    Case("string_for_a_bool_in_toml", ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "expects bool, got 'no'", setup=write("c.toml", 'exact = "no"\n')),
    Case("deeply_nested_toml", ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2, "nested too deeply",
         setup=write("c.toml", "steps = " + "[" * 100_000 + "]" * 100_000 + "\n")),
    Case("teleport_with_more_samples_than_width_names_options", ARCH + ["--set", "widths=10,20,20", "--set", "n=20"], 2, "--set n=…"),
    Case("classification_widths_that_do_not_fit_the_dataset", ARCH + ["--set", "task=classification", "--set", "dataset=digits", "--set", "widths=60,16,10"], 2,
         "(--set widths=…)"),
    Case("steps_not_a_multiple_of_unroll_names_options", ARCH + ["--set", "steps=25"], 2, "--set unroll=…"),
    # values that used to escape as tracebacks, and prefixes of options (no abbreviations)
    Case("optimizers_list_with_no_name", ["optimizers", "--quick", "--optimizers", ",", "--no-progress"], 2,
         "no optimizer given; choose from: sgd"),
    Case("seed_offset_whose_seeds_overflow_64_bits",
         ["generalization", "--quick", "--seed-offset", str(2**63 - 1), "--no-progress"], 2,
         "the seed offset must be at most"),
    Case("prefix_of_an_option_is_not_that_option", ["compare", "--step", "5", *EVAL], 2,
         "unrecognized arguments: --step 5"),
    Case("prefix_of_a_train_option", ["train", "--out", "o", "--meth", "lstm-update", *TRAIN], 2,
         "unrecognized arguments: --meth"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)
