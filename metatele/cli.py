"""Command line: `metatele train | eval | compare | repdyn`. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from metatele import checkpoints, config, train
from metatele._version import __version__
from metatele.errors import CheckpointError, ConfigError, MetateleError, SeedOverlapError, TrainStateExistsError
from metatele.evaluation import compare, report
from metatele.methods.registry import LEARNED
from metatele.repdyn import paper as repdyn_paper
from metatele.datasets import DATASETS
from metatele.tasks import (LAWS, PAPER_MNIST_WIDTHS, PAPER_N, PAPER_WIDTHS, ClassificationFamily, RegressionFamily,
                            TaskFamily, family_from_dict)
from metatele.tasks.seeds import EVAL_FIRST_SEED, TRAIN_SEEDS, VALID_FIRST_SEED

VALIDATION_TASKS = 32  # validation tasks for tuning the baselines in compare


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"metatele: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(lo: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {v}")
        return v

    return parse


positive_int = _int_at_least(1, "positive")
nonneg_int = _int_at_least(0, "non-negative")


def _widths(text: str) -> list[int]:
    try:
        widths = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 20,32,32,20, got {text!r}") from None
    if len(widths) < 3 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"need ≥ 3 positive widths (input, hidden…, output), got {text!r}")
    return widths


def resolve_device(name: str) -> str:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but CUDA is not available on this machine; use --device cpu")
    return name


def _eval_args(p: argparse.ArgumentParser, out_default: str, logdir_default: str) -> None:
    p.add_argument("--tasks", type=positive_int, default=64, help="number of unseen tasks (default 64)")
    p.add_argument("--steps", type=positive_int, default=100, help="inner steps per task (default 100)")
    p.add_argument("--first-seed", type=nonneg_int, default=EVAL_FIRST_SEED,
                   help=f"first task seed; tasks are S..S+tasks-1 (default {EVAL_FIRST_SEED}, disjoint from training)")
    p.add_argument("--logdir", default=logdir_default, help=f"TensorBoard log directory (default {logdir_default})")
    p.add_argument("--out", default=out_default, help=f"directory for results.csv/.md and loss_curves.png (default {out_default})")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--repdyn", action="store_true",
                   help="also log the two-point representation dynamics (H, Yd, w; hidden layer 1, samples 0 and 1)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metatele", description="Learning to optimize with parameter-space symmetry (learned teleportation).")
    p.add_argument("--version", action="version", version=f"metatele {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train a learned optimizer")
    t.add_argument("--method", choices=tuple(LEARNED), help="which meta-optimizer (default: the config's, else lstm-update-tele)")
    t.add_argument("--config", help="TOML config file (keys as in metatele.config.TrainConfig)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--out", required=True, help="checkpoint directory, e.g. checkpoints/NAME")
    t.add_argument("--resume", action="store_true", help="continue from the training state in --out")
    t.add_argument("--logdir", help="TensorBoard log directory (default runs/NAME)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    c = sub.add_parser("compare", help="compare shipped/learned meta-optimizers against baselines on unseen tasks")
    c.add_argument("--checkpoints", default=None, help="directory with <method>/model.safetensors (default: shipped)")
    c.add_argument("--task", choices=("regression", "classification"), default="regression",
                   help="task family (default regression: the paper's)")
    c.add_argument("--widths", type=_widths, default=None,
                   help="network widths, e.g. 20,32,32,20 (default: 20,20,20; classification: 784,16,10,10)")
    c.add_argument("--n", type=positive_int, default=None,
                   help="regression samples per task (default min(20, smallest hidden-layer input width))")
    c.add_argument("--law", choices=tuple(LAWS), default="paper", help="regression law of the tasks (default paper)")
    c.add_argument("--dataset", choices=DATASETS, default="mnist5k", help="classification dataset (default mnist5k)")
    _eval_args(c, "results/compare", "runs/compare")

    e = sub.add_parser("eval", help="evaluate one checkpoint on unseen tasks (of the family it was trained on)")
    e.add_argument("--checkpoint", required=True, help="a model.safetensors or a checkpoint directory")
    _eval_args(e, "results/eval", "runs/eval")

    r = sub.add_parser("repdyn", help="fit the two-point representation-dynamics ODE (van Rossem & Saxe)",
                       description="Runs on the CPU (there is no --device): each two-point network trains in its "
                       "own single-threaded process, one per core.")
    r.add_argument("--quick", action="store_true", help="small networks and few steps (< 60 s)")
    r.add_argument("--checkpoints", default=None, help="learned optimizers to probe (default: shipped)")
    r.add_argument("--tasks", type=positive_int, default=8, help="teleport tasks probed per optimizer (default 8)")
    r.add_argument("--out", default="results/repdyn", help="directory for figures and the table")
    r.add_argument("--json", help="write the fits as JSON to this file")
    r.add_argument("--workers", type=nonneg_int, default=0,
                   help="networks trained at once, one process each (default 0: one per CPU core)")
    r.add_argument("--no-progress", action="store_true")
    return p


def cmd_train(a: argparse.Namespace) -> int:
    kw = {"method": a.method} if a.method else {}
    cfg = config.load(a.config, a.set, **kw)
    device = resolve_device(a.device)
    out = Path(a.out)
    logdir = Path(a.logdir) if a.logdir else Path("runs") / out.name
    try:
        run = train.run(cfg, out, resume=a.resume, device=device, logdir=logdir, progress=not a.no_progress)
    except TrainStateExistsError as e:
        raise ConfigError(f"{e} (pass --resume to continue it, or another --out)") from None
    state = "interrupted; saved" if run.interrupted else "done"
    if run.rank == 0:  # in a distributed run, one summary
        print(f"{state}: {run.trajectories_seen}/{cfg.trajectories} trajectories, {run.progress.skipped_windows} "
              f"diverged windows skipped; checkpoint {out}/, TensorBoard {logdir}")
    return 130 if run.interrupted else 0


def _check_seeds(a: argparse.Namespace) -> None:
    try:
        compare.check_test_seeds(a.first_seed, a.tasks)
    except SeedOverlapError as e:
        raise SeedOverlapError(f"{e} (--first-seed)") from None


def _run_eval(a: argparse.Namespace, family: TaskFamily, entries: Callable[[TaskFamily, str], list[compare.Entry]]) -> int:
    device = resolve_device(a.device)
    test = compare.test_tasks(family, a.first_seed, a.tasks, device)
    methods = entries(family, device)
    print(f"evaluating on task seeds {a.first_seed}..{a.first_seed + a.tasks - 1} (training seeds are "
          f"{TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1})", file=sys.stderr)
    results = compare.evaluate(methods, test, a.steps, progress=not a.no_progress, probe_layer=1 if a.repdyn else None)
    out, logdir = Path(a.out), Path(a.logdir)
    report.report(results, logdir, out)
    print((out / "results.md").read_text(), end="")
    print(f"wrote {out}/results.csv, {out}/results.md, {out}/loss_curves.png; TensorBoard: tensorboard --logdir {logdir}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    _check_seeds(a)
    ckdir = Path(a.checkpoints) if a.checkpoints else checkpoints.pretrained_dir()
    if not ckdir.is_dir():
        raise ConfigError(f"checkpoint directory not found: {ckdir}")

    if a.task == "classification":
        family: TaskFamily = ClassificationFamily(a.dataset, tuple(a.widths or PAPER_MNIST_WIDTHS))
    else:
        widths = tuple(a.widths or PAPER_WIDTHS)
        family = RegressionFamily(widths, a.n or min(PAPER_N, min(widths[:-2])), LAWS[a.law])

    def entries(family: TaskFamily, device: str) -> list[compare.Entry]:
        valid = family.sample(range(VALID_FIRST_SEED, VALID_FIRST_SEED + VALIDATION_TASKS), device=device)
        found, skipped = compare.learned(ckdir, family.widths, device)
        if skipped:
            print(f"metatele: warning: skipped {', '.join(skipped)}: they only run on the shape they were trained for",
                  file=sys.stderr)
        return compare.baselines(valid, a.steps) + found

    return _run_eval(a, family, entries)


def cmd_eval(a: argparse.Namespace) -> int:
    _check_seeds(a)
    device = resolve_device(a.device)
    model = checkpoints.load_model(a.checkpoint, device=device)
    try:  # the family it was trained on; checkpoints from before 0.2 store none: the paper's family at their widths
        family = family_from_dict(model.metadata["family"]) if "family" in model.metadata else \
            RegressionFamily(model.spec.widths, PAPER_N)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{a.checkpoint}: invalid task family in the metadata ({e})") from None
    return _run_eval(a, family, lambda f, d: [compare.Entry(model, {"checkpoint": str(a.checkpoint)})])


def cmd_repdyn(a: argparse.Namespace) -> int:
    ckdir = Path(a.checkpoints) if a.checkpoints else checkpoints.pretrained_dir()
    return repdyn_paper.main(quick=a.quick, out=Path(a.out), json_path=a.json, checkpoints_dir=ckdir,
                             n_tasks=a.tasks, workers=a.workers, progress=not a.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 0
    handler = {"train": cmd_train, "compare": cmd_compare, "eval": cmd_eval, "repdyn": cmd_repdyn}[a.command]
    try:
        return handler(a)
    except MetateleError as e:
        print(f"metatele: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metatele: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
