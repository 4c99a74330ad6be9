"""The benchmark scripts' command lines: every one takes --device (checked by `metatele.options.resolve_device`,
refused in one line with exit code 2) or says in its --help that it runs on the CPU only."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CPU_ONLY = {"threads", "distributed_scaling"}  # they measure CPU threads and processes
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


def _main(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
          ) -> tuple[int, str, str]:
    """Run benchmarks/<name>.py's main() in this process with `argv`; (exit code, stdout, stderr)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other (sgemm_peak)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as e:
        module.main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_every_benchmark_is_listed():
    assert set(SCRIPTS) >= CPU_ONLY and len(SCRIPTS) >= 8


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_offers_a_device_or_says_cpu_only(name, monkeypatch, capsys):
    code, out, _ = _main(name, ["--help"], monkeypatch, capsys)
    assert code == 0
    text = " ".join(out.split())
    if name in CPU_ONLY:
        assert "--device DEVICE" not in text and "CPU only" in text, text
    else:
        assert "--device DEVICE" in text and "cpu, cuda or cuda:N" in text, text


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - CPU_ONLY))
@pytest.mark.parametrize("device, needle", [("gpu", "--device must be cpu, cuda or cuda:N, got 'gpu'"),
                                            ("cuda:99", "--device cuda:99")])
def test_a_device_this_machine_lacks_is_one_line_and_exit_2(name, device, needle, monkeypatch, capsys):
    code, out, err = _main(name, ["--device", device], monkeypatch, capsys)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err


@pytest.mark.slow
def test_time_to_quality_suite_mode_scores_the_untrained_rule(monkeypatch):
    """`time_to_quality.py --suite`'s measure end to end without meta-training (no time given): on round 5's
    validation problems the untrained rule scores below tuned Adam on the validation IQM both at the meta-training
    problems' Adam lr 10^-1.5 (measured −0.42: the deep validation net wants 10^-2) and at 1e-3 (−2.95), so neither
    is reached, and no batch runs (`tests/test_bench.py` checks the reached-at-0 branch against a fixed reference)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmark_ttq", BENCHMARKS / "time_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for estimator, lr in (("tbptt", 10 ** -1.5), ("pes", 1e-3)):
        result = module.suite_time_to_quality(estimator, 1, 0.0, lr)
        assert result["reached_batch"] is None and result["batches"] == 0
