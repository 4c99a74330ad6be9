"""Bad command-line values: one line naming the problem, exit code 2, no traceback."""
from __future__ import annotations

import pytest
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
