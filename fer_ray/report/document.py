"""The report as a list of blocks, rendered twice: ``report.md`` and a self-contained
``report.html`` (images as base64 data URIs, tables as HTML, no external references).

Also the text helpers: Markdown / HTML tables from DataFrames. The tables and sentences the
report is composed of (per-class scores, ensemble variants, most confused class pairs) are
computed in ``fer_ray.report.analysis``.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fer_ray.data import class_distribution
from fer_ray.metrics import confusion_matrix, per_class_scores
from fer_ray.report import analysis, figures
from fer_ray.report.analysis import (
    confusion_sentence,
    most_confused_pairs,
    per_class_table,
    variant_table,
)
from fer_ray.report.inputs import (
    Inputs,
    launch_order,
    log_columns,
    stored_val_probas,
    usable,
)

_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}th:first-child,
td:first-child{text-align:left}thead{background:#f0f0f0}img{max-width:100%;height:auto}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}.note{color:#8a5a00}"""


@dataclass
class Block:
    """One piece of the report. kind: heading, text, note, bullets, table, image."""

    kind: str
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    path: Path | None = None


@dataclass
class Document:
    """Blocks in reading order; ``write`` renders report.md and report.html into ``out``."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block("heading", text, level=level))

    def text(self, text: str) -> None:
        self.blocks.append(Block("text", text))

    def note(self, text: str) -> None:
        """A caveat or a skipped section, shown in italics so it is not mistaken for a result."""
        self.blocks.append(Block("note", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Block("bullets", items=list(items)))

    def table(self, df: pd.DataFrame) -> None:
        self.blocks.append(Block("table", table=df))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(Block("image", caption, path=Path(path)))

    def write(self, out: Path) -> tuple[Path, Path]:
        md, page = out / "report.md", out / "report.html"
        md.write_text(render_markdown(self, out))
        page.write_text(render_html(self))
        return md, page


def _cell(value: object) -> str:
    """Tables hold counts and percentages: ints with thousands separators, floats with one
    decimal (three significant digits below 0.1)."""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        number = float(value)
        return f"{number:.1f}" if number == 0 or abs(number) >= 0.1 else f"{number:.3g}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


def _rows(df: pd.DataFrame) -> list[tuple[object, ...]]:
    """(index, *values) per row with each column's own type (iterrows would upcast ints)."""
    return list(df.itertuples(index=True, name=None))


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table; the index becomes the first column (numbers right-aligned)."""
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|"]
    for row in _rows(df):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>"
                   for c in [df.index.name or "", *df.columns])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
                   + "</tr>" for row in _rows(df))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(doc: Document, out: Path) -> str:
    """Markdown with images linked relative to ``out`` (where report.md is written)."""
    parts = [f"# {doc.title}"]
    for b in doc.blocks:
        if b.kind == "heading":
            parts.append(f"{'#' * b.level} {b.text}")
        elif b.kind == "text":
            parts.append(b.text)
        elif b.kind == "note":
            parts.append(f"*Note: {b.text}*")
        elif b.kind == "bullets":
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table" and b.table is not None:
            parts.append(markdown_table(b.table))
        elif b.kind == "image" and b.path is not None:
            rel = Path(os.path.relpath(b.path, out)).as_posix()
            parts.append(f"![{b.text}]({rel})\n\n*{b.text}*")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn Markdown **bold** and `code` into HTML (the only inline marks used)."""
    out = html.escape(text)
    for mark, tag in (("**", "strong"), ("`", "code")):
        pieces = out.split(mark)
        if len(pieces) % 2 == 1:  # only balanced marks
            out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
    return out


def render_html(doc: Document) -> str:
    """One HTML file with everything inside: PNGs as data URIs, no links to other files."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>"
             f"{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(doc.title)}</h1>"]
    for b in doc.blocks:
        if b.kind == "heading":
            level = min(b.level, 6)
            parts.append(f"<h{level}>{html.escape(b.text)}</h{level}>")
        elif b.kind == "text":
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f"<p class='note'><em>Note: {_inline(b.text)}</em></p>")
        elif b.kind == "bullets":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table" and b.table is not None:
            parts.append(html_table(b.table))
        elif b.kind == "image" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(b.text)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{_inline(b.text)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- composing the report from an experiment's inputs ----------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _summary(doc: Document, inp: Inputs) -> None:
    rec, s = inp.record, inp.settings
    data = rec.get("data", {})
    trials = ", ".join(f"{n} {k}" for k, n in rec.get("trials", {}).items())
    best = rec.get("best") or {}
    doc.text(f"Experiment `{inp.experiment}`: space **{s.space}**, {len(inp.results)} trials "
             f"({trials}), up to {s.epochs_cap()} epochs each with ASHA (grace {s.grace_period}, "
             f"reduction factor {s.reduction_factor}); "
             f"{(rec.get('wall_seconds') or 0) / 60:.1f} minutes of wall time.")
    # The splits this report scores (a repeated --test split is shown once), else the record's.
    counts = {k: len(v) for k, v in inp.data.tests.items()} if inp.data is not None \
        else data.get("tests", {})
    tests = ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"
    doc.text(f"Data: {data.get('source') or 'built-in synthetic faces'} — train "
             f"{data.get('n_train', 0):,}, validation {data.get('n_val', 0):,}, tests: {tests}. "
             f"Fingerprint `{data.get('fingerprint', '?')}`.")
    if best:
        doc.text(f"Best trial **{best.get('trial_id')}**: validation accuracy "
                 f"{_pct(best.get('val_acc', 0))}, macro-F1 {_pct(best.get('val_macro_f1', 0))} "
                 f"(epoch {best.get('best_epoch')}).")
    if inp.ensemble is not None:
        info = inp.ensemble.info
        doc.text(f"Ensemble: **{info.get('variant', '?')}** chosen on validation, "
                 f"{len(inp.ensemble.members)} member(s). Every variant, as stored by the "
                 "ensemble build (validation figures are the ones the choice was made on, so "
                 "they are optimistic; the test columns are not):")
        doc.table(variant_table(info).round(1))
    for note in inp.notes:
        doc.note(note)


def _data_section(doc: Document, inp: Inputs, out: Path) -> None:
    doc.heading("1. Class distribution")
    if inp.data is None:
        doc.note("data unavailable (see above)")
        return
    table = class_distribution(inp.data)
    table.index.name = "class"
    for col in (c for c in table.columns if c.endswith(" n")):
        table[col] = table[col].astype(np.int64)  # counts, not floats
    doc.table(table)
    doc.image(figures.plot_class_distribution(table, out / "class_distribution.png"),
              "Class shares per split (the legend gives each split's size).")


def _errors_section(doc: Document, inp: Inputs, out: Path) -> None:
    doc.heading("2. Errors: confusion matrices and per-class scores")
    if not inp.labels:
        doc.note("no predictions (data or models unavailable)")
        return
    doc.text("Rows are true classes, columns predictions; the right panel divides each row by "
             "its class size, so the diagonal is the recall. The ensemble uses the argmax rule.")
    for split, labels in inp.labels.items():
        doc.heading(f"{split} ({len(labels):,} faces)", level=3)
        models = {}
        if split in inp.ens_cal:
            models["ensemble"] = inp.ens_cal[split]
        if split in inp.single:
            models["single"] = inp.single[split]
        cms = {}
        for label, probs in models.items():
            cm = confusion_matrix(labels, probs.argmax(1), len(inp.classes))
            cms[label] = cm
            acc = np.trace(cm) / max(cm.sum(), 1)
            path = figures.plot_confusion(
                cm, f"{_long(label, inp)} on {split}: accuracy {_pct(acc)}",
                out / f"confusion_{label}_{_slug(split)}.png", inp.classes)
            doc.image(path, f"Confusion matrix of the {_long(label, inp)} on {split}.")
        doc.text("Per-class precision (P), recall (R) and F1 in % (single = the best trial, "
                 f"{inp.single_id}):")
        doc.table(per_class_table(cms, inp.classes))
        for label, cm in cms.items():
            pairs = most_confused_pairs(cm, top=4, min_count=2)
            totals = cm.sum(axis=1)
            doc.text(f"Most confused classes for the {_long(label, inp)} on {split}:")
            doc.bullets([confusion_sentence(p, int(totals[p[0]]), inp.classes) for p in pairs]
                        or ["no class is confused with another"])


def _long(label: str, inp: Inputs) -> str:
    return f"best single model ({inp.single_id})" if label == "single" else label


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "split"


def _training_section(doc: Document, inp: Inputs, out: Path) -> None:
    doc.heading("3. Learning curves")
    if not any(len(h) for h in inp.histories.values()):
        doc.note("no trial folder holds a result.json or progress.csv")
        return
    s = inp.settings
    rungs = []
    r = s.grace()
    while r < s.epochs_cap():  # ASHA compares trials at grace * factor^k epochs
        rungs.append(r)
        r *= s.reduction_factor
    path = figures.plot_learning_curves(inp.histories, inp.results, out / "learning_curves.png",
                                        rungs=rungs)
    stopped = int(inp.results["asha_stopped"].astype(bool).sum())
    doc.image(path, f"Validation accuracy per epoch; {stopped} trial(s) stopped by ASHA "
                    "(red rings); dotted lines: the epochs where ASHA compares trials.")


def _search_section(doc: Document, inp: Inputs, out: Path) -> None:
    doc.heading("4. The search")
    results = inp.results.copy()
    results["order"] = launch_order(results, inp.histories)
    doc.image(figures.plot_search_progress(results, out / "search_progress.png"),
              "Each trial's best validation accuracy in launch order, and the best so far.")
    ok = usable(results)
    varied, constant = analysis.varied_params(ok)
    logs = log_columns(ok, inp.record)
    if varied:
        doc.image(figures.plot_hyperparameters(ok, varied, out / "hyperparameters.png", logs),
                  "Each sampled hyperparameter against the trial's best validation accuracy.")
    if constant:
        doc.text("Constant across usable trials: " + ", ".join(
            f"`{c.removeprefix('param.')}`" for c in constant) + ".")
    importances, why = analysis.param_importances(
        ok, inp.settings.metric, "maximize" if inp.settings.mode == "max" else "minimize",
        log_columns=logs)
    if importances:
        doc.image(figures.plot_importance(importances, out / "importance.png"),
                  f"fANOVA importance on a study rebuilt from {len(ok)} usable trials; "
                  "trials stopped by ASHA enter with the accuracy they had reached, and with "
                  "few trials this is a rough guide, not a ranking.")
    else:
        doc.note(f"hyperparameter importance skipped: {why}")


def _ensemble_section(doc: Document, inp: Inputs, out: Path) -> None:
    doc.heading("5. The ensemble")
    probas, labels, names = stored_val_probas(inp)
    e = inp.ensemble
    chosen = e.info.get("final_validation", {}).get("acc") if e is not None else None
    if len(probas):
        curve = analysis.ensemble_size_curve(probas, labels, len(probas))
        doc.image(figures.plot_ensemble_size(curve, chosen, out / "ensemble_size.png"),
                  f"Validation accuracy of uniform top-k voting and greedy selection over the "
                  f"{len(names)} best usable trials (stored val_probs.npy).")
    if e is None:
        doc.note("no ensemble folder: weights, calibration and decision figures left out")
        return
    accs = [float(m.info.get("val_acc", np.nan)) for m in e.members]
    doc.image(figures.plot_weights([m.name for m in e.members], e.weights, accs,
                                   out / "ensemble_weights.png"),
              f"Member weights; TTA mode {e.tta}, temperature "
              f"{e.temperature:.2f}.")
    if not inp.ens_cal:
        doc.note("no predictions on the data: calibration and decision figures left out")
        return
    calib = {s: (inp.ens_raw[s], inp.ens_cal[s], inp.labels[s]) for s in inp.ens_cal}
    doc.image(figures.plot_calibration(calib, e.temperature, out / "calibration.png"),
              "Reliability diagrams (10 confidence bins, those with at least 10 faces drawn); "
              "the temperature was fitted on validation only.")
    recalls = {}
    for split, probs in inp.ens_cal.items():
        y = inp.labels[split]
        k = len(e.classes)
        plain = per_class_scores(confusion_matrix(y, e.decide(probs, "argmax")[0], k))["recall"]
        adj = per_class_scores(confusion_matrix(y, e.decide(probs, "adjusted")[0], k))["recall"]
        recalls[split] = (plain, adj)
    doc.image(figures.plot_recall_rules(recalls, out / "recall_rules.png", e.classes),
              "Per-class recall with argmax and with the class biases fitted on validation "
              "for macro-F1 (biases: " + ", ".join(
                  f"{c} {b:+.1f}" for c, b in zip(e.classes, e.class_biases, strict=True))
              + ").")
    coverage = {s: (inp.ens_cal[s], inp.labels[s]) for s in inp.ens_cal}
    doc.image(figures.plot_coverage(coverage, e.defer_threshold, out / "coverage.png"),
              "Accuracy on the faces the ensemble answers when it defers the least confident "
              "ones; the dot is the threshold chosen on validation for "
              f"{_pct(e.info.get('target_coverage', 0.9))} coverage.")


def _ablation_section(doc: Document, out: Path, csv: Path) -> None:
    doc.heading("6. Ablation: augmentation and early stopping")
    try:
        runs = pd.read_csv(csv)
        table = analysis.summarize(runs)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        doc.note(f"{csv}: unreadable ablation table ({exc})")
        return
    md = csv.with_name("ablation.md")
    doc.text(f"From `{csv}` ({len(runs)} runs" + (f"; details in `{md}`" if md.is_file()
                                                  else "") + "), mean ± std over seeds:")
    doc.table(table)
    png = csv.with_name("ablation.png")
    if not png.is_file():
        png = figures.plot_ablation(analysis.summarize(runs, text=False), out / "ablation.png")
    doc.image(png, "Ablation: accuracy per variant (error bars: std over seeds).")


def compose(inp: Inputs, out: Path, ablation: Path | None = None) -> Document:
    """The whole report for ``inp``; figures are written into ``out`` as it goes."""
    doc = Document(f"fer-ray report: {inp.experiment.name}")
    _summary(doc, inp)
    _data_section(doc, inp, out)
    _errors_section(doc, inp, out)
    _training_section(doc, inp, out)
    _search_section(doc, inp, out)
    _ensemble_section(doc, inp, out)
    csv = ablation or inp.experiment / "ablation" / "ablation.csv"
    if csv.is_file():
        _ablation_section(doc, out, csv)
    return doc
