"""Run a smoke search on a real two-node Ray cluster on this machine (a test helper).

    python tests/support/cluster_search.py STORAGE [--kill-worker]

Starts a head and a worker node as separate raylets (``ray.cluster_utils.Cluster``), joins it
with ``--address`` semantics, and runs the search. With --kill-worker, a thread removes the
worker node once both running trials have checkpointed, then adds a fresh worker, so the
trial that was on the lost node must be retried from its checkpoint.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.cluster_utils import Cluster

from fer_ray.experiment import SearchSettings
from fer_ray.search.run import run_experiment


def main() -> None:
    storage, kill = Path(sys.argv[1]), "--kill-worker" in sys.argv
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    settings = SearchSettings(space="smoke", synthetic_size=3000 if kill else 600,
                              max_epochs=4 if kill else 2, grace_period=4 if kill else 2,
                              num_samples=2 if kill else 4, max_concurrent=2,
                              storage=str(storage), name="exp", address=cluster.address,
                              max_failures=3)

    def kill_worker() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            trials = list((storage / "exp").glob("trial_*"))
            if len(trials) >= 2 and all(any(t.glob("checkpoint_*")) for t in trials):
                break
            time.sleep(0.2)
        cluster.remove_node(worker, allow_graceful=False)
        print("KILLED worker node", worker.node_id, flush=True)
        cluster.add_node(num_cpus=1)

    if kill:
        threading.Thread(target=kill_worker, daemon=True).start()
    try:
        run_experiment(settings)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
