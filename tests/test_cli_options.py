"""The command line's options: every long-running command takes the same --out, --logdir, --device,
--no-progress and --threads (defined once, in metatele.options.common_options), no option is matched by a prefix, and --threads
sets torch's threads for the command only."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from metatele import cli, options

REQUIRED = {"eval": ["--checkpoint", "ck"], "train": ["--out", "o"]}  # what each command needs besides the shared options
SHARED = ("--out", "--logdir", "--device", "--no-progress", "--threads")


def help_text(capsys: pytest.CaptureFixture, command: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_takes_the_shared_options(command, capsys):
    argv = [command, *REQUIRED.get(command, []), "--out", "o", "--logdir", "l", "--device", "cpu", "--no-progress",
            "--threads", "3"]
    a = cli.build_parser().parse_args(argv)
    assert (a.out, a.logdir, a.device, a.no_progress, a.threads) == ("o", "l", "cpu", True, 3)
    defaults = cli.build_parser().parse_args([command, *REQUIRED.get(command, []), "--out", "o"])
    assert (defaults.device, defaults.no_progress, defaults.threads) == ("cpu", False, options.DEFAULT_THREADS)
    text = help_text(capsys, command)
    for option in SHARED:
        assert option in text, option
    assert f"default {options.DEFAULT_THREADS}" in " ".join(text.split())  # the default is documented


def test_the_shared_options_are_defined_once():
    source = Path(cli.__file__).read_text() + Path(options.__file__).read_text()
    for option in SHARED:
        assert len(re.findall(rf'add_argument\("{option}"', source)) == 1, option


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_no_option_is_taken_for_a_longer_one(command, capsys):
    """`--step 5` is not `--steps 5`: every long option, shortened by one letter, is refused (exit 2)."""
    options = sorted(set(re.findall(r"(--[a-z][a-z-]+)", help_text(capsys, command))) - {"--help"})
    assert options
    for option in (o for o in options if o[:-1] not in options):  # --tasks[:-1] is compare's --task
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args([command, *REQUIRED.get(command, []), option[:-1], "1"])
        assert e.value.code == 2, option
        assert "unrecognized arguments" in capsys.readouterr().err


def test_threads_apply_to_the_command_and_are_restored(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "compare", lambda a: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    assert cli.main(["compare", "--threads", "2"]) == 0
    assert cli.main(["compare"]) == 0
    assert seen == [2, options.DEFAULT_THREADS] and torch.get_num_threads() == before
