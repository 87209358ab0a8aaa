"""``python -m fer_ray.report``: figures, report.md and a self-contained report.html for one
finished experiment (``<storage>/<name>/``). No Ray: it reads what the search wrote.

Reading order: data -> errors (confusion matrices) -> training curves -> the search ->
the ensemble -> the ablation (when one was run). Sections whose inputs are missing (no
ensemble folder, data no longer at its path) are replaced by a note, not an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main
from fer_ray.errors import ConfigError, DataError
from fer_ray.paths import check_output_dir, require_file, require_file_or_folder
from fer_ray.report.inputs import load_inputs

REPORT_FILES = ("*.png", "report.md", "report.html")  # what --out may already hold


def check_report_args(experiment: Path, out: Path, test: str | None,
                      ablation: Path | None) -> None:
    """Refuse bad paths before the experiment is read: --test and --ablation must exist (a
    missing one is not silently left out), --out must be a folder the report may replace."""
    if not experiment.is_dir():
        raise DataError(f"{experiment}: no such experiment folder")
    if ablation is not None:
        try:
            require_file(ablation)
        except DataError as exc:
            raise ConfigError(f"--ablation {exc}") from None
    if test is not None:
        require_file_or_folder(test)
    inputs = [experiment, *(p for p in (test, ablation) if p is not None)]
    check_output_dir(out, "--out", REPORT_FILES, inputs, may_hold=[experiment])


def build_report(experiment: Path, out: Path | None = None, test: str | None = None,
                 ablation: Path | None = None, device: str = "auto") -> Path:
    """Write the figures, report.md and report.html; returns the output folder.

    Written into a temp folder that replaces ``out`` when the report is complete.
    """
    from fer_ray.report.document import compose

    target = Path(out) if out is not None else Path(experiment) / "report"
    check_report_args(Path(experiment), target, test, ablation)
    inputs = load_inputs(Path(experiment), test, device)
    with storage.replace_dir(target, REPORT_FILES) as tmp:
        doc = compose(inputs, tmp, ablation)
        doc.write(tmp)
    md, page = target / "report.md", target / "report.html"
    figures = sum(1 for b in doc.blocks if b.kind == "image")
    for note in inputs.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"report written: {md} and {page} ({figures} figures)")
    return target


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m fer_ray.report",
                                description="Figures and a report (Markdown + HTML) for a "
                                            "finished fer-ray experiment.")
    p.add_argument("--experiment", required=True, type=Path, help="<storage>/<name> of a search")
    p.add_argument("--out", type=Path, help="output folder (default <experiment>/report)")
    p.add_argument("--test", help="an extra labelled test set (npz, CSV, image folder)")
    p.add_argument("--ablation", type=Path,
                   help="ablation.csv to include (default <experiment>/ablation/ablation.csv)")
    p.add_argument("--device", default="auto",
                   help="where the ensemble and best model run: auto (a GPU when there is "
                        "one), cpu, cuda, cuda:N")
    args = p.parse_args(argv)

    def body() -> int:
        build_report(args.experiment, args.out, args.test, args.ablation, args.device)
        return 0

    return run_main(body)
