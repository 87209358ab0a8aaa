"""``python -m fer_ray.export --ensemble DIR --out model.onnx [--opset N]``

Exports a saved ensemble as one ONNX graph with its decision rule and description in the
file's metadata (``fer_ray.ensemble.onnx_export``), to be run with onnxruntime and no torch
(``fer_ray.ensemble.onnx_model``). ``--out`` is checked before the ensemble loads (not a
folder, not the ensemble, in a folder that can be created) and replaced only by a complete,
checked file. The exported graph is then run on synthetic faces against torch, and one line
reports the path, the size and the largest probability difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main
from fer_ray.errors import ConfigError, DataError
from fer_ray.paths import check_output_file, shown

PARITY_IMAGES = 300


def export_file(ensemble_dir: str, out: Path, opset: int | None) -> str:
    """Export and measure parity; returns the line to print. DataError when the exported
    graph differs from torch by more than the tolerance (the file is then left in place,
    named in the message, for inspection)."""
    from fer_ray.data.synthetic import make_synthetic
    from fer_ray.ensemble.model import Ensemble
    from fer_ray.ensemble.onnx_export import (
        DEFAULT_OPSET,
        PARITY_TOLERANCE,
        check_opset,
        export_onnx,
        parity,
    )
    from fer_ray.ensemble.onnx_model import OnnxEnsemble

    opset = check_opset(DEFAULT_OPSET if opset is None else opset)  # before the load
    ensemble = Ensemble.load(storage.fetch_dir(ensemble_dir))
    try:
        created = storage.make_dirs(out.parent)
    except OSError as exc:
        raise ConfigError(f"--out {shown(out)}: cannot create its folder "
                          f"({exc.strerror})") from None
    try:
        export_onnx(ensemble, out, opset)
    except OSError as exc:  # a full disk, a vanished folder: any previous file stays
        storage.remove_created(created)
        raise DataError(f"--out {shown(out)}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        storage.remove_created(created)
        raise
    check = parity(ensemble, OnnxEnsemble.load(out), make_synthetic(PARITY_IMAGES, 0).images)
    if not check.ok:
        raise DataError(f"{shown(out)}: the exported graph differs from torch by "
                        f"{check.max_abs_diff:.2e} > {PARITY_TOLERANCE:g} on "
                        f"{check.images} synthetic faces (a bug: please report it)")
    size = out.stat().st_size / 2**20
    return (f"{out}: {size:.1f} MiB, {len(ensemble.members)} members, opset {opset}; "
            f"parity on {check.images} synthetic faces: max |p_onnx - p_torch| "
            f"{check.max_abs_diff:.1e}, same labels {check.same_argmax:.1%}")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fer_ray.export",
                       description="Export a saved ensemble to one ONNX file.")
    p.add_argument("--ensemble", required=True, help="an ensemble folder (or its URI)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ONNX opset, 13..20 (default 17)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        local = [] if storage.is_uri(args.ensemble) else [args.ensemble]
        check_output_file(args.out, "--out", local)
        print(export_file(args.ensemble, args.out, args.opset))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
