"""``python -m fer_ray.serve`` given bad flags: refused before Ray starts (exit 2, one
``error:`` line, no traceback), each naming what is wrong.

The cases call ``main(argv)`` in this process (``run_in_process``, which fails a case that
imports Ray); ``..._in_a_real_process`` runs ``python -m fer_ray.serve`` as a user would. The
HTTP refusals of a running service are in test_serve.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from support.cli import assert_refused, run, run_in_process, save_tiny_ensemble


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ensemble(tmp_path_factory.mktemp("ens") / "ensemble")


BAD_FLAGS = [
    (["--port", "0"], "--port 0: not in 1..65535"),
    (["--port", "70000"], "--port 70000: not in 1..65535"),
    (["--port", "http"], "--port: invalid int value"),
    (["--replicas", "0"], "--replicas 0: must be at least 1"),
    (["--replicas", "999"], "CPUs, but this machine has"),
    (["--cpus-per-replica", "0"], "--cpus-per-replica 0: must be above 0"),
    (["--gpus-per-replica", "-1"], "--gpus-per-replica -1: must be 0 or more"),
    (["--gpus-per-replica", "1.5"], "above 1 it must be a whole number"),
    (["--max-batch", "0"], "--max-batch 0: must be at least 1"),
    (["--batch-wait-ms", "-5"], "--batch-wait-ms -5: must be 0 or more"),
    (["--max-upload-mb", "0"], "--max-upload-mb 0: must be above 0"),
    (["--host", ""], "--host: empty"),
    (["--host", "203.0.113.7"], "cannot listen there"),  # not an address of this machine
]
# Past Ray's import (the address is tried where the cluster is joined): a real process only.
ADDRESS = (["--address", "127.0.0.1:1"], "no Ray cluster answers there")


@pytest.mark.parametrize(("args", "expected"), BAD_FLAGS)
def test_bad_flags_are_refused_before_ray_starts(ensemble: Path, args: list[str],
                                                 expected: str) -> None:
    assert_refused(run_in_process("serve", "--ensemble", str(ensemble), *args), expected)


@pytest.mark.parametrize(("args", "expected"), [BAD_FLAGS[0], BAD_FLAGS[2], ADDRESS])
def test_bad_flags_are_refused_before_ray_starts_in_a_real_process(
        ensemble: Path, args: list[str], expected: str) -> None:
    """The ``python -m`` entry point (exit code through sys.exit, nothing else on stderr,
    imports included; argparse's refusal too), and --address, checked after Ray's import."""
    assert_refused(run("serve", "--ensemble", str(ensemble), *args), expected)


def test_a_gpu_asked_for_on_a_machine_without_one(ensemble: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_refused(run_in_process("serve", "--ensemble", str(ensemble), "--gpus-per-replica",
                                  "1"), "--gpus-per-replica 1: this machine has no GPU")


def test_an_onnx_ensemble_on_a_gpu(ensemble: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not checked: the flags are refused first")
    assert_refused(run_in_process("serve", "--ensemble", str(model), "--gpus-per-replica", "1"),
                   "an .onnx ensemble runs on the CPU")


def test_a_port_already_taken(ensemble: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_refused(run_in_process("serve", "--ensemble", str(ensemble), "--port", port),
                       f"--port {port}: cannot listen there")


def test_a_missing_or_damaged_ensemble(ensemble: Path, tmp_path: Path) -> None:
    assert_refused(run_in_process("serve", "--ensemble", str(tmp_path / "nothing")),
                   "not an ensemble folder")
    assert_refused(run_in_process("serve", "--ensemble", str(tmp_path)),
                   "not an ensemble folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ensemble.json").write_text(json.dumps({"format_version": 1}))
    assert_refused(run_in_process("serve", "--ensemble", str(broken)), "not a valid ensemble")
