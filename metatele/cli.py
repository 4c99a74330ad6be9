"""Command line: `metatele train | eval | compare | bench | repdyn | generalization | optimizers`. User errors print one
line and exit 2, and so do operating-system errors (disk full, permission denied, …); Ctrl-C prints one line and
exits 130. Output locations are checked before any long work. The program's entry point is `metatele.entry`."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from metatele import checkpoints, config, train
from metatele._version import __version__
from metatele.errors import (UNREGISTERED, CheckpointError, ConfigError, DistributedError, MetateleError,
                             TrainStateExistsError)
from metatele.io import check_output_dir, check_output_file, clean_stray_temps
from metatele.bench import suite as bench_suite
from metatele.evaluation import compare, report, tuned_lrs
from metatele.learned import LEARNED
from metatele.repdyn import paper as repdyn_paper
from metatele.repdyn.probe import RepdynRecorder
from metatele.datasets import DATASETS
from metatele.studies import generalization
from metatele.studies import optimizers as optimizers_study
from metatele.tasks import (LAWS, PAPER_MNIST_WIDTHS, PAPER_N, PAPER_WIDTHS, ClassificationFamily, RegressionFamily,
                            TaskFamily, family_from_dict)
from metatele.options import (MAX_TASKS, SMALLER, Parser, allocation_failure, check_memory,
                              common_options, int_in, location, nonneg_int, positive_int, resolve_device, task_count,
                              widths_arg)
from metatele.tasks.seeds import EVAL_FIRST_SEED, TRAIN_SEEDS, VALID_FIRST_SEED

VALIDATION_TASKS = 32  # validation tasks for tuning the baselines in compare
MAX_WORKERS = 1024     # repdyn --workers
QUICK_CONFIG = Path(__file__).resolve().parent / "configs" / "quick.toml"  # train --quick


def _check_outputs(out: Path, logdir: Path | None) -> None:
    """Before long work: --out and --logdir must be writable directories; stray temporary files of earlier,
    interrupted runs in --out are removed."""
    check_output_dir(out, "--out")
    if logdir is not None:
        check_output_dir(logdir, "--logdir")
    clean_stray_temps(out)


def import_plugins(modules: Sequence[str]) -> None:
    """Import the user's modules that register task families or learned methods (`--plugin`): a module name on
    the Python path, or a .py file. Only what the user names is imported; checkpoint metadata never is."""
    for name in modules:
        try:
            if name.endswith(".py"):
                spec = importlib.util.spec_from_file_location(Path(name).stem, name)
                if spec is None or spec.loader is None or not Path(name).is_file():
                    raise ImportError(f"no such file {name}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"--plugin {name}: cannot import it ({e})") from None


def _option_hint(e: ConfigError) -> ConfigError:
    """A library ConfigError with the options that set the config keys it names."""
    flags = [f"--{k}" if k == "method" else f"--set {k}=…" for k in e.params]
    return ConfigError(f"{e} ({' or '.join(flags)})" if flags else str(e), params=e.params)


def _warn(message: str) -> None:
    print(f"metatele: warning: {message}", file=sys.stderr)


def _warn_missing_checkpoints(ckdir: Path) -> None:
    """One warning line naming the learned methods without a checkpoint in `ckdir` (they are skipped)."""
    missing = [name for name, path in compare.learned_paths(ckdir).items() if not path.exists()]
    if len(missing) == len(LEARNED):
        _warn(f"{ckdir} holds no learned checkpoint (<method>/{checkpoints.MODEL_FILE}); skipped "
              f"{', '.join(missing)}: only the baselines run")
    elif missing:
        _warn(f"{ckdir} has no checkpoint for {', '.join(missing)}; skipped")


def _eval_args(p: argparse.ArgumentParser, out_default: str, logdir_default: str, out_help: str = "") -> None:
    p.add_argument("--tasks", type=task_count, default=64, help=f"number of unseen tasks, 1..{MAX_TASKS} (default 64)")
    p.add_argument("--steps", type=positive_int, default=100, help="inner steps per task (default 100)")
    p.add_argument("--first-seed", type=nonneg_int, default=EVAL_FIRST_SEED,
                   help=f"first task seed; tasks are S..S+tasks-1 ≤ 2^63−1 (default {EVAL_FIRST_SEED}, disjoint "
                   "from training and validation)")
    common_options(p, out_default, f"directory for results.csv/.md and loss_curves.png{out_help}", logdir_default,
            f"default {logdir_default}")
    p.add_argument("--repdyn", action="store_true",
                   help="also log the two-point representation dynamics (H, Yd, w; hidden layer 1, samples 0 and 1)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="metatele", description="Learning to optimize with parameter-space symmetry (learned teleportation).")
    p.add_argument("--version", action="version", version=f"metatele {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    t = sub.add_parser("train", help="meta-train a learned optimizer")
    t.add_argument("--method", help=f"which learned method, one of {', '.join(LEARNED)} or one a --plugin registers "
                   "(default: the config's, else lstm-update-tele)")
    t.add_argument("--config", help="TOML config file (keys as in metatele.config.TrainConfig)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--quick", action="store_true", help="a tiny recipe that meta-trains in under a minute on 2 CPU "
                   f"cores (the config {QUICK_CONFIG.relative_to(QUICK_CONFIG.parents[2])})")
    common_options(t, None, "checkpoint directory, e.g. checkpoints/NAME", None, "default runs/NAME")
    start = t.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the training state in --out")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh even if --out holds checkpoints (they are replaced at the first save)")
    t.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import a module (name or .py file) that registers task families or learned methods "
                   "(repeatable); see metatele.tasks.registry and metatele.learned.base")

    c = sub.add_parser("compare", help="compare shipped/learned meta-optimizers against baselines on unseen tasks")
    c.add_argument("--checkpoints", default=None, help="directory with <method>/model.safetensors (default: shipped)")
    c.add_argument("--task", choices=("regression", "classification"), default="regression",
                   help="task family (default regression: the paper's)")
    c.add_argument("--widths", type=widths_arg, default=None,
                   help="network widths, e.g. 20,32,32,20 (default: 20,20,20; classification: 784,16,10,10)")
    c.add_argument("--n", type=positive_int, default=None,
                   help="regression samples per task (default min(20, smallest hidden-layer input width))")
    c.add_argument("--law", choices=tuple(LAWS), default="paper", help="regression law of the tasks (default paper)")
    c.add_argument("--dataset", choices=DATASETS, default="mnist5k", help="classification dataset (default mnist5k)")
    _eval_args(c, "results/compare", "runs/compare", f", and {tuned_lrs.FILE}: the baselines' tuned learning rates, "
               "reused when the same problem, horizon and grid are compared again")

    e = sub.add_parser("eval", help="evaluate one checkpoint on unseen tasks (of the family it was trained on)")
    e.add_argument("--checkpoint", required=True, help="a model.safetensors or a checkpoint directory")
    e.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import a module (name or .py file) that registers the checkpoint's family or method")
    _eval_args(e, "results/eval", "runs/eval")

    r = sub.add_parser("repdyn", help="fit the two-point representation-dynamics ODE (van Rossem & Saxe)",
                       description="Runs on the CPU (--device cpu only): each two-point network trains in its "
                       "own process, --workers at once.")
    r.add_argument("--quick", action="store_true", help="small networks and few steps (< 60 s)")
    r.add_argument("--checkpoints", default=None, help="learned optimizers to probe (default: shipped)")
    r.add_argument("--tasks", type=task_count, default=8, help="teleport tasks probed per optimizer (default 8)")
    common_options(r, "results/repdyn", "directory for figures and the table", "runs/repdyn",
            "the recorded and fitted (H, Yd, w) series; default runs/repdyn")
    r.add_argument("--json", type=location, help="write the fits as JSON to this file")
    r.add_argument("--workers", type=int_in(0, MAX_WORKERS), default=0,
                   help="networks trained at once, one process each with --threads threads (default 0: one per "
                   "CPU core)")

    g = sub.add_parser("generalization", help="sharpness, orbit curvature and generalization; teleporting for it "
                       "(paper §5)", description="Correlates sharpness and orbit curvature of SGD minima with "
                       "validation loss and the generalization gap, and teleports once mid-training to lower/raise "
                       "them (see metatele.studies.generalization).")
    g.add_argument("--dataset", action="append", choices=DATASETS,
                   help="repeatable (default: mnist5k and digits, and fashion-mnist when installed)")
    g.add_argument("--quick", action="store_true", help="tiny sizes (< 60 s on 2 CPU cores)")
    g.add_argument("--part", choices=("correlation", "teleport"), action="append",
                   help="run only this part (repeatable; default both)")
    g.add_argument("--runs", type=positive_int, help="SGD runs per seed set, two sets (default 50; quick 5)")
    g.add_argument("--epochs", type=positive_int, help="SGD epochs (default 40; quick 2)")
    g.add_argument("--teleport-seeds", type=positive_int, help="seeds of the teleport experiment (default 10; quick 2)")
    g.add_argument("--teleport-epoch", type=positive_int, help="teleport before this epoch (default 20; quick 1)")
    g.add_argument("--seed-offset", type=nonneg_int, default=0,
                   help="use seeds (i + 1 + OFFSET)·54321 instead of (i + 1)·54321 (another seed split)")
    common_options(g, "results/generalization", "output directory", "runs/generalization", "default runs/generalization")

    b = sub.add_parser("bench", help="the benchmark suite: learned optimizers against tuned Adam, AdamW, SGD-momentum "
                       "and RMSProp on fixed problems (held-out and meta-training splits; docs/bench.md)")
    b.add_argument("--quick", action="store_true", help="three small problems, 40 steps (CI)")
    b.add_argument("--learned", nargs="*", default=None, metavar="NAME|PATH",
                   help="size-agnostic learned optimizers to judge: shipped names or checkpoint paths (default: the "
                   "shipped adafac and adafac-tele; --learned with no value: baselines only)")
    b.add_argument("--split", choices=("all", "heldout", "train", "validation"), default="all",
                   help="which problems (default all)")
    b.add_argument("--seeds", type=int_in(2, 1024), default=bench_suite.SEEDS,
                   help=f"report seeds per problem (default {bench_suite.SEEDS})")
    b.add_argument("--tune-seeds", type=int_in(1, 1024), default=bench_suite.TUNE_SEEDS,
                   help=f"tuning seeds per lr (default {bench_suite.TUNE_SEEDS})")
    b.add_argument("--cache", type=location, default=None,
                   help="directory to keep the tuned baselines' runs in and reuse them from")
    common_options(b, "results/bench", "directory for results.csv/.md, summary.csv, loss_curves.png", "runs/bench",
                   "default runs/bench")

    o = sub.add_parser("optimizers", help="SGD, momentum, AdaGrad, RMSProp, Adam with and without teleport on real data",
                       description="The paper's §5 experiment on an nn.Sequential 784-16-10-10 (see "
                       "metatele/studies/optimizers.py): lr tuned per optimizer, then every arm over several seeds.")
    o.add_argument("--quick", action="store_true",
                   help="3 epochs, 2 seeds, 2 teleports, arms none/teleport/teleport-layer1, a 2-point lr grid tuned "
                   "on 1 epoch (< 60 s on 2 cores)")
    o.add_argument("--dataset", choices=DATASETS, default="mnist5k", help="default mnist5k")
    o.add_argument("--optimizers", help=f"comma-separated subset of {','.join(optimizers_study.OPTIMIZERS)}")
    o.add_argument("--arms", help=f"comma-separated subset of {','.join(optimizers_study.ARMS)} (must include none)")
    o.add_argument("--epochs", type=positive_int, help="epochs per run (default 40; quick 3)")
    o.add_argument("--seeds", type=positive_int, help="seeds per arm (default 5; quick 2)")
    common_options(o, "results/optimizers", "directory for tables and figures", "runs/optimizers", "default runs/optimizers")
    o.add_argument("--overwrite", action="store_true", help="replace results already in --out/--logdir")
    return p


def cmd_train(a: argparse.Namespace) -> int:
    import_plugins(a.plugin)
    kw = {"method": a.method} if a.method else {}
    if a.quick and a.config:
        raise ConfigError("--quick is a config of its own: give --quick or --config, not both")
    try:
        cfg = config.load(QUICK_CONFIG if a.quick else a.config, a.set, **kw)
    except ConfigError as e:
        raise _option_hint(e) from None
    device = resolve_device(a.device)
    out = Path(a.out)
    logdir = Path(a.logdir) if a.logdir else Path("runs") / out.name
    try:  # train.run checks both locations before any work
        run = train.run(cfg, out, resume=a.resume, overwrite=a.overwrite, device=device, logdir=logdir,
                        progress=not a.no_progress, names=("--out", "--logdir"))
    except TrainStateExistsError as e:
        resume = "--resume to continue its training state, " if (out / checkpoints.STATE_FILE).exists() else ""
        raise ConfigError(f"{e}; refusing to replace it (pass {resume}--overwrite to replace it, or choose "
                          "another --out)") from None
    except ConfigError as e:
        raise _option_hint(e) from None
    except DistributedError as e:
        raise DistributedError(f"{e} (--resume, with the same --out)") from None
    state = "interrupted; saved" if run.interrupted else "done"
    if run.rank == 0:  # in a distributed run, one summary
        print(f"{state}: {run.trajectories_seen}/{cfg.trainer.trajectories} trajectories, {run.progress.skipped_windows} "
              f"diverged windows skipped; checkpoint {out}/, TensorBoard {logdir}")
    return 128 + (run.stop_signal or 0) if run.interrupted else 0  # 130 for SIGINT, 143 for SIGTERM


def _check_seeds(a: argparse.Namespace) -> None:
    try:
        compare.check_test_seeds(a.first_seed, a.tasks)
    except ConfigError as e:
        raise type(e)(f"{e} (--first-seed)") from None


def _run_eval(a: argparse.Namespace, family: TaskFamily, entries: Callable[[TaskFamily, str], list[compare.Entry]]) -> int:
    device = resolve_device(a.device)
    _check_outputs(Path(a.out), Path(a.logdir))
    check_memory(family.widths, a.tasks, device)  # a mixture (no single shape) is left to the allocator's answer
    test = compare.test_tasks(family, a.first_seed, a.tasks, device)
    methods = entries(family, device)
    print(f"evaluating on task seeds {a.first_seed}..{a.first_seed + a.tasks - 1} (training seeds are "
          f"{TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1})", file=sys.stderr)
    recorders = [RepdynRecorder(layer=1)] if a.repdyn else []
    results = compare.evaluate(methods, test, a.steps, progress=not a.no_progress, recorders=recorders)
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
    if a.checkpoints:  # the shipped directory holds what it holds: no warning for methods never shipped
        _warn_missing_checkpoints(ckdir)

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
        cache = tuned_lrs.TunedLRs(Path(a.out) / tuned_lrs.FILE, tuned_lrs.problem_key(family, valid), warn=_warn)
        tuned = compare.baselines(valid, a.steps, cache)
        if cache.reused:
            print(f"reused tuned learning rates from {cache.path} ({', '.join(cache.reused)})", file=sys.stderr)
        return tuned + found

    return _run_eval(a, family, entries)


def cmd_eval(a: argparse.Namespace) -> int:
    import_plugins(a.plugin)
    _check_seeds(a)
    device = resolve_device(a.device)
    model = checkpoints.load_model(a.checkpoint, device=device)
    try:  # the family it was trained on; checkpoints from before 0.2 store none: the paper's family at their widths
        family = family_from_dict(model.metadata["family"]) if "family" in model.metadata else \
            RegressionFamily(model.spec.fixed_widths, PAPER_N)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{a.checkpoint}: invalid task family in the metadata ({e})") from None
    return _run_eval(a, family, lambda f, d: [compare.Entry(model, {"checkpoint": str(a.checkpoint)})])


def cmd_repdyn(a: argparse.Namespace) -> int:
    if resolve_device(a.device) != "cpu":
        raise ConfigError("repdyn runs on the CPU (each two-point network trains in its own process); use --device cpu")
    ckdir = Path(a.checkpoints) if a.checkpoints else checkpoints.pretrained_dir()
    _check_outputs(Path(a.out), Path(a.logdir))
    if a.json:
        check_output_file(Path(a.json), "--json")
        clean_stray_temps(Path(a.json).parent)
    if not a.quick and a.checkpoints:  # the full run also probes the learned optimizers
        if not ckdir.is_dir():
            raise ConfigError(f"checkpoint directory not found: {ckdir}")
        _warn_missing_checkpoints(ckdir)
    return repdyn_paper.main(quick=a.quick, out=Path(a.out), json_path=a.json, checkpoints_dir=ckdir,
                             n_tasks=a.tasks, workers=a.workers, threads=a.threads, logdir=Path(a.logdir),
                             progress=not a.no_progress)


def cmd_generalization(a: argparse.Namespace) -> int:
    base = generalization.QUICK if a.quick else generalization.FULL
    sizes = {"runs": a.runs, "epochs": a.epochs, "teleport_seeds": a.teleport_seeds, "teleport_epoch": a.teleport_epoch}
    plan = replace(base, **{k: v for k, v in sizes.items() if v is not None})
    device = resolve_device(a.device)
    _check_outputs(Path(a.out), Path(a.logdir))
    return generalization.main(a.dataset, plan, Path(a.out), Path(a.logdir), device,
                               a.part or ("correlation", "teleport"), a.seed_offset, progress=not a.no_progress)


def cmd_optimizers(a: argparse.Namespace) -> int:
    split = lambda v: tuple(x for x in v.split(",") if x) if v else None  # noqa: E731
    device = resolve_device(a.device)
    _check_outputs(Path(a.out), Path(a.logdir))
    return optimizers_study.main(quick=a.quick, out=Path(a.out), logdir=Path(a.logdir), overwrite=a.overwrite,
                                 progress=not a.no_progress, dataset=a.dataset, optimizers=split(a.optimizers),
                                 arms=split(a.arms), epochs=a.epochs, seeds=a.seeds, device=device)


def cmd_bench(a: argparse.Namespace) -> int:
    device = resolve_device(a.device)
    _check_outputs(Path(a.out), Path(a.logdir))
    return bench_suite.main(quick=a.quick, learned=a.learned, out=Path(a.out), logdir=Path(a.logdir), split=a.split,
                            seeds=a.seeds, tune_seeds=a.tune_seeds, device=device, progress=not a.no_progress,
                            cache=Path(a.cache) if a.cache else None)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "compare": cmd_compare, "eval": cmd_eval, "bench": cmd_bench, "repdyn": cmd_repdyn,
    "generalization": cmd_generalization, "optimizers": cmd_optimizers}


def _fail(message: str) -> int:
    """Say `metatele: error: message` on stderr as one line in one write (ranks of a torchrun job share the pipe:
    print's separate newline let two ranks' lines run together), and give exit code 2."""
    sys.stderr.write(f"metatele: error: {message}\n")
    sys.stderr.flush()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    threads = torch.get_num_threads()
    try:
        parser = build_parser()
        a = parser.parse_args(argv)
        if a.command is None:
            parser.print_help()
            return 0
        torch.set_num_threads(a.threads)
        return COMMANDS[a.command](a)
    except MetateleError as e:
        return _fail(str(e).replace(UNREGISTERED, f"{UNREGISTERED} with --plugin MODULE"))
    except OSError as e:  # a file-system error no check foresaw: one line too, never a traceback
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except (MemoryError, torch.OutOfMemoryError):
        return _fail(f"out of memory; {SMALLER}")
    except RuntimeError as e:  # torch's allocator failing (e.g. under ulimit -v); any other error is a bug: raise
        reason = allocation_failure(e)
        if reason is None:
            raise
        return _fail(f"{reason}; {SMALLER}")
    except KeyboardInterrupt:
        print("metatele: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
