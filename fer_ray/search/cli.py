"""``python -m fer_ray.search``: a Ray Tune + Optuna TPE + ASHA search over the CNN family."""

from __future__ import annotations

import argparse
import time

from fer_ray._cli import ArgumentParser, add_vote_flags, run_main
from fer_ray.experiment import SearchSettings

DEFAULTS = SearchSettings()


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = ArgumentParser(
        prog="python -m fer_ray.search",
        description="Search CNN hyperparameters with Ray Tune, Optuna (TPE) and ASHA. "
                    "Without arguments: a first look on built-in synthetic faces, the "
                    "'quick' space, 8 trials within 2.5 minutes.")
    p.add_argument("--data", help="fer2013.csv, train.csv, image folders, .npz or a folder")
    p.add_argument("--test", help="a labelled test set, evaluated only after all choices")
    p.add_argument("--space", help=f"search space name (search_spaces/) or YAML (default: "
                                   f"{d.space}; the first look: {FIRST_LOOK['space']})")
    p.add_argument("--time-budget", type=float,
                   help="minutes for the whole run, ensemble included: trials keep coming "
                        "until the deadline, and the ones still running then are stopped")
    p.add_argument("--num-samples", type=int, default=d.num_samples,
                   help="trials to run (default: 16, or no limit with --time-budget)")
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--grace-period", type=int, default=d.grace_period,
                   help="ASHA: epochs every trial gets before it can be stopped "
                        "(default: a quarter of --max-epochs)")
    p.add_argument("--reduction-factor", type=int, default=d.reduction_factor)
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial)
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial,
                   help="fractions share a GPU: 0.25 runs four trials per GPU")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent,
                   help="trials at once (0: as many as resources allow)")
    p.add_argument("--storage", default=d.storage, help="experiments folder (or shared URI)")
    p.add_argument("--name", default="", help="experiment name (default search-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name")
    p.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--top-k", type=int, default=d.top_k, help="ensemble size")
    p.add_argument("--warm-start", metavar="EXPERIMENT",
                   help="an earlier experiment: its best configs run first, and its finished "
                        "trials seed TPE")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--subsample", type=int, help="use this many training images (stratified)")
    p.add_argument("--synthetic-size", type=int, default=d.synthetic_size,
                   help="built-in data: images to generate")
    add_vote_flags(p, d.labels)
    p.add_argument("--max-failures", type=int, default=d.max_failures,
                   help="retries of a crashed trial (from its last checkpoint)")
    p.add_argument("--progress-every", type=float, default=d.progress_every, metavar="SECONDS",
                   help="a status line this often during the search")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard")
    p.add_argument("--device", default=d.device,
                   help="where the work after the search runs (scoring the best model, the "
                        "ensemble's candidates and TTA): auto, cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision,
                   help="the trials' training arithmetic: auto (bf16 where the hardware has "
                        "it natively), bf16 or fp32")
    return p


# Without --data, --time-budget and --num-samples: a first look that ends in about 3 minutes
# on 2 CPU cores whatever their pace (Ray start, trials, ensemble, leaderboard): 8 trials
# share the budget (4 after each other on each of 2 slots), ASHA stops the weak ones at
# equal time spent, and the ensemble is scored on held-out built-in faces. The budget, not
# the trial count, bounds it: trials plan their steps to end within their share.
FIRST_LOOK = {"time_budget": 2.5, "num_samples": 8, "space": "quick"}


def is_first_look(args: argparse.Namespace) -> bool:
    return (args.data is None and args.time_budget is None and args.num_samples is None
            and not args.resume)


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    values = {k: v for k, v in vars(args).items() if k != "resume" and v is not None}
    if is_first_look(args):
        values = {**FIRST_LOOK, **values}  # a --space given still counts
    return SearchSettings(**values)


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = build_parser().parse_args(argv)

    def body() -> int:
        settings_from_args(args).check()  # bad flags: refused before Ray is even imported
        if is_first_look(args):
            print(f"a first look: built-in faces, {FIRST_LOOK['num_samples']} trials within "
                  f"{FIRST_LOOK['time_budget']:g} minutes (a real run: --data FOLDER "
                  "--time-budget MINUTES, space small)", flush=True)
        from fer_ray.ensemble.cli import build_and_save
        from fer_ray.experiment import experiment_location
        from fer_ray.search.run import run_experiment  # imports Ray: after parsing

        record = run_experiment(settings_from_args(args), resume=args.resume, started=started)
        # The search ends with its ensemble, chosen on validation, scored once on the tests,
        # inside what is left of the budget.
        settings = SearchSettings(**record["settings"])
        build_and_save(experiment_location(settings), None, settings.top_k, "greedy", None,
                       deadline=record.get("timing", {}).get("deadline"),
                       device=settings.device)
        total = time.time() - started
        budget = f" (budget {settings.time_budget:g} min)" if settings.time_budget else ""
        print(f"whole run: {total / 60:.1f} min{budget}")
        return 0

    return run_main(body)
