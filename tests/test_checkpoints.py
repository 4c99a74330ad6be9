"""Untrusted and broken checkpoint files are refused with one clear line; nothing is unpickled."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from cli_cases import Case, EVAL, TRAIN, crafted, ids, run_case, spec_set
from safetensors.torch import save_file

from metatele import checkpoints, cli, config, step, train
from metatele.errors import CheckpointError, ConfigError


@pytest.fixture
def good(tmp_path) -> Path:
    run = train.build(config.load(method="lstm-update-tele", hidden=8, widths=[4, 4, 3], n=4))
    path = tmp_path / "model.safetensors"
    checkpoints.save_model(path, run.model)
    return path


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.path, "w"))


def refused(path, needle, **kw):
    with pytest.raises(CheckpointError) as ei:
        checkpoints.load_model(path, **kw)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_good_checkpoint_loads(good):
    m = checkpoints.load_model(good, method="lstm-update-tele", widths=(4, 4, 3))
    assert m.spec.hidden == 8


def test_truncated_and_empty(good, tmp_path):
    data = good.read_bytes()
    for cut in (len(data) // 2, 100, 8, 3):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            checkpoints.load_model(p)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    refused(tmp_path / "empty.safetensors", "empty")


def test_not_safetensors(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_text("hello, I am a text file")
    refused(p, "not a safetensors")
    refused(tmp_path / "missing.safetensors", "not found")


def test_pickle_renamed_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps({"w": _Marker(str(marker))}))
    refused(p, "pickle")
    z = tmp_path / "torchsave.safetensors"
    torch.save({"w": _Marker(str(marker))}, z)  # zip container with a pickle inside
    refused(z, "pickle")
    assert not marker.exists()
    # sanity: the payload really is live
    pickle.loads(p.read_bytes())
    assert marker.exists()


def test_metadata_mismatch_with_shapes(good, tmp_path):
    tensors, meta = checkpoints.read(good)
    tensors["update.head.weight"] = torch.zeros(3, 3)
    p = tmp_path / "bad.safetensors"
    checkpoints.save(p, tensors, {k: v for k, v in meta.items() if k not in ("format", "version")})
    refused(p, "shape")
    p2 = tmp_path / "nometa.safetensors"
    save_file({"a": torch.zeros(2)}, str(p2))
    refused(p2, "without metatele metadata")


def test_method_or_widths_mismatch(good):
    refused(good, "not the requested", method="lstm-update")
    refused(good, "widths", widths=(20, 20, 20))


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path, capsys):
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    assert cli.main(["eval", "--checkpoint", str(p), "--tasks", "2", "--steps", "2", "--out", str(tmp_path / "o"),
                     "--logdir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pickle" in err


def test_header_length_with_low_byte_0x80_is_still_safetensors(tmp_path):
    """A header of 128 + 256·k bytes makes the file start with byte 0x80, like a pickle; it must still load."""
    for pad in range(0, 256):
        p = tmp_path / "x.safetensors"
        checkpoints.save(p, {"w": torch.zeros(2)}, {"kind": "test", "pad": "x" * pad})
        if p.read_bytes()[:1] == b"\x80":
            tensors, meta = checkpoints.read(p)
            assert meta["pad"] == "x" * pad and torch.equal(tensors["w"], torch.zeros(2))
            return
    raise AssertionError("no padding gave a header whose length starts with 0x80")


# ---------------------------------------------------------------- checkpoint metadata is untrusted input (cli_cases)
CASES = [
    Case("metadata_hidden_200000_refused_before_allocation", ["eval", "--checkpoint", "ck", *EVAL], 2,
         "hidden must be in [1, 4096], got 200000", setup=crafted(checkpoints.MODEL_FILE, spec_set(hidden=200000))),
    Case("metadata_exact_no_is_not_true", ["eval", "--checkpoint", "ck", *EVAL], 2,
         "exact must be true or false, got 'no'", setup=crafted(checkpoints.MODEL_FILE, spec_set(exact="no"))),
    Case("metadata_width_float", ["eval", "--checkpoint", "ck", *EVAL], 2, "got 20.5",
         setup=crafted(checkpoints.MODEL_FILE, spec_set(widths=[20.5, 20, 20]))),
    Case("metadata_magnitude_string", ["eval", "--checkpoint", "ck", *EVAL], 2, "magnitude must be",
         setup=crafted(checkpoints.MODEL_FILE, spec_set(magnitude="0.1"))),
    Case("metadata_not_an_object", ["eval", "--checkpoint", "ck", *EVAL], 2, "not a JSON object",
         setup=crafted(checkpoints.MODEL_FILE, raw_meta="[1, 2]")),
    Case("metadata_nested_too_deeply", ["eval", "--checkpoint", "ck", *EVAL], 2, "unreadable metatele metadata",
         setup=crafted(checkpoints.MODEL_FILE, raw_meta="[" * 100_000 + "]" * 100_000)),
    Case("metadata_family_with_a_string_count", ["eval", "--checkpoint", "ck", *EVAL], 2, "invalid task family",
         setup=crafted(checkpoints.MODEL_FILE, lambda m: m["family"].update(n="20"))),
    Case("integer_weight_tensor_is_refused", ["eval", "--checkpoint", "ck", *EVAL], 2, "dtype torch.int64",
         setup=crafted(checkpoints.MODEL_FILE, tensor_fn=lambda t: t.update({k: t[k].long() for k in list(t)[:1]}))),
    Case("bool_weight_tensor_is_refused", ["eval", "--checkpoint", "ck", *EVAL], 2, "dtype torch.bool",
         setup=crafted(checkpoints.MODEL_FILE, tensor_fn=lambda t: t.update({k: t[k] > 0 for k in list(t)[:1]}))),
    Case("train_state_missing_a_key", ["train", "--out", "ck", "--resume", *TRAIN], 2, "metadata is invalid",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.pop("batches_done"), src="partial")),
    Case("train_state_negative_counter", ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "batches_done must be in [0, 2], got -1",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.update(batches_done=-1), src="partial")),
    Case("train_state_counter_beyond_the_run", ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "batches_done must be in [0, 2], got 7",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.update(batches_done=7), src="partial")),
    Case("train_state_counter_of_the_wrong_type", ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "batches_done must be an integer",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.update(batches_done="1"), src="partial")),
    Case("train_state_adam_shape_mismatch", ["train", "--out", "ck", "--resume", *TRAIN], 2, "has shape",
         setup=crafted(checkpoints.STATE_FILE, src="partial", tensor_fn=lambda t: t.update(
             {k: torch.zeros(3) for k in [k for k in t if k.endswith("exp_avg")][:1]}))),
    Case("train_state_unexpected_tensor", ["train", "--out", "ck", "--resume", *TRAIN], 2, "unexpected tensor",
         setup=crafted(checkpoints.STATE_FILE, src="partial",
                       tensor_fn=lambda t: t.update({"adam.x.y": torch.zeros(1)}))),
    Case("train_state_adam_settings_tampered", ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "adam_param_groups", setup=crafted(checkpoints.STATE_FILE, lambda m: m["adam_param_groups"][0].update(lr=5.0),
                                            src="partial")),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)


def test_warm_start_from_a_checkpoint_without_progress_starts_exactly_there(tmp_path):
    """`init`: a horizon-aware model warm-started from a round-2-layout checkpoint (no progress features) rolls out
    bit for bit as that checkpoint at every horizon (new input columns and schedule heads start at zero); the
    run then trains, saves and resumes without reading the init checkpoint again."""
    keys = dict(method="lstm-update-tele", hidden=8, widths=[4, 4, 3], n=4, gate=True, preprocessing="rms",
                update_form="gain", trajectories=16, batch=8, steps=10, eval_every=0, ckpt_every=1)
    source = train.build(config.load(**keys, seed=3)).model
    checkpoints.save_model(tmp_path / "src.safetensors", source)
    cfg = config.load(**keys, progress=True, init=str(tmp_path / "src.safetensors"))
    warm = train.build(cfg).model
    task = cfg.family.sample(range(10**9, 10**9 + 4))
    for T in (5, 50):
        assert torch.equal(step.rollout(warm, task, T).loss, step.rollout(source, task, T).loss)
    train.run(cfg, tmp_path / "run", progress=False, max_batches=1)
    (tmp_path / "src.safetensors").unlink()
    assert train.run(cfg, tmp_path / "run", resume=True, progress=False).progress.batches_done == 2
    with pytest.raises(ConfigError, match="init"):
        train.build(cfg)  # a fresh run needs the init checkpoint
    other = config.load(**{**keys, "method": "lstm-update"}, init=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="init.*lstm-update-tele"):
        train.build(other)
    wider = config.load(**{**keys, "hidden": 9}, progress=True, init=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="init.*shape"):
        train.build(wider)
