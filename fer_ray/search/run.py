"""One experiment end to end: record settings, search, write results, report the best model.

Layout under ``<storage>/<name>/``: Ray's experiment folder (trial folders with their
checkpoints), ``search.json`` (resolved settings, space, data fingerprint, versions, outcome)
and ``results.parquet`` (one row per trial).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from fer_ray import storage
from fer_ray._cli import versions
from fer_ray.config import to_dict
from fer_ray.data import FerData, fingerprint, format_class_table
from fer_ray.errors import ConfigError, DataError
from fer_ray.experiment import (
    RESULTS_PARQUET,
    SEARCH_JSON,
    SearchSettings,
    base_config,
    experiment_location,
    load_search_data,
    read_search_json,
    settings_from_record,
)
from fer_ray.models.inference import resolve_device, score_splits
from fer_ray.models.io import load_model
from fer_ray.search.preflight import check_resources, check_storage, experiment_folder
from fer_ray.search.proposals import warm_start
from fer_ray.search.results import (
    USABLE,
    as_jsonable,
    leaderboard,
    status_counts,
    trial_rows,
    write_parquet,
)
from fer_ray.search.tuner import SearchRun, Timing, run_search
from fer_ray.space import load_space


def resolve_settings(settings: SearchSettings, resume: bool) -> SearchSettings:
    """A fresh search gets a name; a resumed one takes its saved settings (but --address)."""
    if not resume:
        name = settings.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        return SearchSettings(**{**settings.to_dict(), "name": name}).check()
    if not settings.name:
        raise ConfigError("--resume needs --name (the experiment to continue)")
    path = experiment_location(settings)
    saved = settings_from_record(read_search_json(path), path)
    return SearchSettings(**{**saved.to_dict(), "storage": settings.storage,
                             "address": settings.address or saved.address})


def post_search_reserve(budget_seconds: float) -> float:
    """Seconds of a budget kept for what follows the trials: results, scoring the best model,
    building the ensemble (fp32 flip-TTA over the candidates) and scoring it on the tests.

    6 % of the budget, at least 45 s (a quarter of budgets under 3 minutes) and at most 3
    minutes (measured on 2 CPU cores: about 80 s after a 45-minute search); the ensemble
    build then fits its candidates into whatever is left (``build_ensemble(deadline=...)``).
    """
    return min(max(0.06 * budget_seconds, min(45.0, 0.25 * budget_seconds)), 180.0)


def run_timing(settings: SearchSettings, record: dict[str, Any], started: float,
               slots: int = 1) -> Timing:
    """The run's deadlines: new from ``started`` and the budget, or a resumed run's own.

    slots: trials at once; with --num-samples each trial's share is the search's time over
    the trials that follow each other in a slot (``SearchSettings.generations``)."""
    if "timing" in record:
        saved = record["timing"]
        return Timing(saved["started"], saved.get("deadline"), saved.get("stop_at"),
                      saved.get("trial_seconds"))
    if not settings.time_budget:
        return Timing(started)
    deadline = started + 60 * settings.time_budget
    stop_at = deadline - post_search_reserve(60 * settings.time_budget)
    return Timing(started, deadline, stop_at, (stop_at - started) / settings.generations(slots))


def evaluate_best(df: Any, run: SearchRun) -> dict[str, dict[str, float]]:
    """The best trial's best checkpoint on every labelled test split (after all choices)."""
    usable = df[df["status"].isin(USABLE) & (df["best_checkpoint"] != "")]
    if usable.empty or not run.data.tests:
        return {}
    model, _ = load_model(storage.fetch_dir(usable.iloc[0]["best_checkpoint"]))
    device = resolve_device(run.settings.device)
    return score_splits(model.to(device), run.data.tests, device)


def run_experiment(settings: SearchSettings, resume: bool = False,
                   started: float | None = None) -> dict[str, Any]:
    """Run or resume a search, write search.json and results.parquet, print a leaderboard.

    started: when the run began (epoch seconds; default now), the start of a time budget.
    """
    started = time.time() if started is None else started
    settings = resolve_settings(settings, resume)
    space = load_space(settings.space)  # a bad space fails before Ray starts
    path = experiment_location(settings)
    check_storage(path, resume)  # writes nothing: the folder is claimed after every check
    record: dict[str, Any] = read_search_json(path) if resume else {}
    # An unusable --warm-start or --device fails here, before anything is written or Ray starts.
    warm = None if resume else warm_start(settings, space, base_config(settings))
    resolve_device(settings.device)
    timing = run_timing(settings, record, started, slots=check_resources(settings))

    limit = settings.trial_limit()
    trials = "trials until the deadline" if limit < 0 else f"{limit} trials"
    budget = f", budget {settings.time_budget:g} min" if settings.time_budget else ""
    print(f"experiment {path}  (space {settings.space}, {trials}{budget})", flush=True)
    data = load_search_data(settings)
    print(format_class_table(data), flush=True)
    if data.train.vote_probs is None and any(p.key == "data.vote_alpha" for p in space.params):
        raise ConfigError(f"space {settings.space} draws data.vote_alpha: give --votes FOLDER "
                          "(FER+ votes for the training data)")
    if resume:
        if fingerprint(data) != record.get("data", {}).get("fingerprint"):
            raise DataError(f"{path}: the data no longer matches the experiment's fingerprint")
    else:
        # Record the settings before the first trial, so an interrupted search can be resumed.
        record = first_record(settings, data, timing, started)
    with experiment_folder(path, None if resume else record):  # writes search.json
        run = run_search(settings, space, data, timing, warm, resume=resume)
    return finish_experiment(settings, path, record, run)


def first_record(settings: SearchSettings, data: FerData, timing: Timing, started: float
                 ) -> dict[str, Any]:
    """search.json as written before the first trial: settings, data, versions, timing."""
    return {"settings": settings.to_dict(), "data": {
        "source": data.source, "fingerprint": fingerprint(data), "n_train": len(data.train),
        "n_val": len(data.val), "tests": {k: len(v) for k, v in data.tests.items()},
        "converted": data.converted, "classes": list(data.classes),
        "left_out": data.left_out}, "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "timing": dataclasses.asdict(timing)}


def finish_experiment(settings: SearchSettings, path: str, record: dict[str, Any],
                      run: SearchRun) -> dict[str, Any]:
    """results.parquet and the completed search.json from a finished run; the leaderboard and
    the best single model's test figures printed. Returns the record."""
    scheme = settings.storage.split("://")[0] if storage.is_uri(settings.storage) else ""
    out_of_time = set(record.get("out_of_time", [])) | run.out_of_time
    df = trial_rows(run.results, run.space, run.base, settings.metric, settings.mode,
                    settings.epochs_cap(), scheme, out_of_time)
    # trial_rows leaves out trials that never started; those the deadline cut before their
    # first epoch have nothing to use either.
    if df.empty or ((df["epochs_run"] == 0) & (df["error"] == "")).all():
        within = f" within --time-budget {settings.time_budget:g} min (starting Ray and " \
            "loading the data took it; give it more time)" if settings.time_budget else ""
        raise DataError(f"{path}: no trial started{within}")
    write_parquet(df, storage.join(path, RESULTS_PARQUET))
    tests = evaluate_best(df, run)
    record.update({
        "space": {"name": run.space.name, "source": run.space.source},
        "base_config": to_dict(run.base), "wall_seconds": run.wall_seconds,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "trials": status_counts(df),
        "best": as_jsonable(df.iloc[0][["trial_id", "val_acc", "val_macro_f1", "best_epoch",
                                        "best_checkpoint"]].to_dict()) if len(df) else {},
        "best_single_test": tests, "out_of_time": sorted(out_of_time),
    })
    if run.warm is not None:
        record["warm_start"] = {"points": len(run.warm.points), "history": len(run.warm.history),
                                "skipped": run.warm.skipped}
    storage.write_bytes(storage.join(path, SEARCH_JSON),
                        json.dumps(as_jsonable(record), indent=2).encode())

    print(f"\nsearch finished in {run.wall_seconds:.0f} s: {len(df)} trials "
          f"({', '.join(f'{v} {k}' for k, v in status_counts(df).items())})")
    print(leaderboard(df))
    for name, s in tests.items():
        print(f"best single model on {name}: acc {s['acc']:.4f}  macro_f1 {s['macro_f1']:.4f}"
              f"  (n={s['n']})")
    print(f"\nresults: {storage.join(path, RESULTS_PARQUET)}\n"
          f"settings: {storage.join(path, SEARCH_JSON)}\ntrials and checkpoints: {path}/")
    return record
