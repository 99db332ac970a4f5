"""Turn an output tree into the paper's tables and plots: `python -m mmpt.results OUTPUT_ROOT`.

    python -m mmpt.results output                        # prints Markdown; writes output/results/*
    python -m mmpt.results output --out report --hm-convention per-dataset

Reads the layout of mmpt.experiments.layout (scripts/<trainer>/*.sh and mmpt.sweep write it): the numbers of each
run folder come from its result record (result.json, mmpt.experiments.record), and writes into --out (default OUTPUT_ROOT/results):
  results.md            few-shot accuracy per shots, base / new / HM per dataset and averaged, cross-dataset,
                        domain generalisation; mean +- std over seeds (numpy std, ddof 0, as CoOp's parser);
                        the published numbers (mmpt.experiments.published) beside ours as "<method> (paper)" rows
  results.csv           every cell in long form (table, method, dataset, shots, metric, mean, std, n, seeds, source)
  fewshot_curves.png    accuracy vs shots per dataset (and the average)
  base2new_bars.png     average base / new / HM per method
HM conventions: "avg" (default; CoCoOp, MaPLe, PromptSRC, MuDPT): the harmonic mean of the average base and
the average new accuracy; "per-dataset" (HPT, RPO): the mean of the per-dataset harmonic means. A dataset's own
HM is the harmonic mean of its mean base and mean new accuracy in both.
"""
import argparse
import csv
import os
import os.path as osp
import re
import sys
from collections import OrderedDict

import numpy as np

from dassl.errors import ConfigError
from mmpt import run_folder
from mmpt.experiments import layout, published, record

HM_CONVENTIONS = {
    "avg": "HM = harmonic mean of the average base and the average new accuracy (CoCoOp / MaPLe / MuDPT)",
    "per-dataset": "HM = mean of the per-dataset harmonic means (HPT / RPO)",
}


def harmonic_mean(a, b):
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


class Cell:
    """The values of one (method, dataset, shots, metric) over seeds."""

    def __init__(self, per_seed):
        self.per_seed = OrderedDict(per_seed)
        values = list(self.per_seed.values())
        self.mean = float(np.mean(values))
        self.std = float(np.std(values))
        self.n = len(values)

    def __str__(self):
        return f"{self.mean:.2f} ± {self.std:.2f}"


def _subdirs(path):
    return sorted(d for d in os.listdir(path) if osp.isdir(osp.join(path, d))) if osp.isdir(path) else []


def _cell(directory, test_log=None):
    """The Cell of a folder of seed folders: the accuracy of each seed folder's finished result record (a folder
    without one is left out; a corrupt one stops with one line naming it). test_log: unused (the record says what
    ran), kept for callers."""
    per_run = OrderedDict()
    for name in _subdirs(directory):
        result = record.read_result(osp.join(directory, name))
        if result is not None and result.finished:
            per_run[name] = result.accuracy
    return Cell(per_run) if per_run else None


def _split_tag(trainer, tag):
    """(cfg, shots) of a cross-dataset folder tag `<cfg>_<K>shots` (ZeroshotCLIP's tag is the cfg)."""
    match = re.fullmatch(r"(.+)_(\d+)shots", tag)
    return (match.group(1), int(match.group(2))) if match and trainer != layout.ZERO_SHOT else (tag, 0)


def collect(output_root):
    """{(protocol, trainer, cfg, dataset, shots, metric): Cell} for every finished group of seed folders.

    protocol/metric: base2new/base, base2new/new, fewshot/accuracy, xd/accuracy (source "imagenet" and targets).
    """
    cells, own_targets = Cells(), {}

    def add(key, directory, test_log):
        cell = _cell(directory, test_log)
        if cell is not None:
            cells[key] = cell
            if track_of(key[1]) and (key[1], key[2]) not in cells.track_notes:
                cells.track_notes[(key[1], key[2])] = track_note(key[1], directory)

    b2n = osp.join(output_root, "base2new")
    for stage, metric, test_log in (("train_base", "base", False), ("test_base", "base", True),
                                    ("test_new", "new", True)):
        for dataset in _subdirs(osp.join(b2n, stage)):
            for shots_dir in _subdirs(osp.join(b2n, stage, dataset)):
                shots = int(shots_dir.split("_")[-1])
                for trainer in _subdirs(osp.join(b2n, stage, dataset, shots_dir)):
                    for cfg in _subdirs(osp.join(b2n, stage, dataset, shots_dir, trainer)):
                        key = ("base2new", trainer, cfg, dataset, shots, metric)
                        if key not in cells:  # train_base (the trained model) wins over test_base
                            add(key, osp.join(b2n, stage, dataset, shots_dir, trainer, cfg), test_log)
    fs = osp.join(output_root, "fewshot")
    for dataset in _subdirs(fs):
        for shots_dir in _subdirs(osp.join(fs, dataset)):
            for trainer in _subdirs(osp.join(fs, dataset, shots_dir)):
                for cfg in _subdirs(osp.join(fs, dataset, shots_dir, trainer)):
                    add(("fewshot", trainer, cfg, dataset, int(shots_dir.split("_")[-1]), "accuracy"),
                        osp.join(fs, dataset, shots_dir, trainer, cfg), False)
    source = osp.join(output_root, layout.SOURCE_DATASET)
    for trainer in _subdirs(source):
        for tag in _subdirs(osp.join(source, trainer)):
            cfg, shots = _split_tag(trainer, tag)
            add(("xd", trainer, cfg, layout.SOURCE_DATASET, shots, "accuracy"), osp.join(source, trainer, tag), False)
    evaluation = osp.join(output_root, "evaluation")
    for trainer in _subdirs(evaluation):
        for tag in _subdirs(osp.join(evaluation, trainer)):
            cfg, shots = _split_tag(trainer, tag)
            for dataset in _subdirs(osp.join(evaluation, trainer, tag)):
                key = ("xd", trainer, cfg, dataset, shots, "accuracy")
                if key not in cells:
                    add(key, osp.join(evaluation, trainer, tag, dataset), True)
                    if dataset not in layout.XD_TARGETS + layout.DG_TARGETS and key in cells:
                        own_targets[dataset] = target_protocol(osp.join(evaluation, trainer, tag, dataset))
    cells.own_targets = own_targets
    return cells


def target_protocol(target_dir):
    """"dg" for a target of one's own whose class names are matched to the source's (DATASET.OWN.
    MATCH_CLASSNAMES in its runs' config.yaml), else "xd"."""
    for seed_dir in _subdirs(target_dir):
        recorded = run_folder.recorded_config(osp.join(target_dir, seed_dir))
        if recorded is not None:
            return "dg" if recorded.get("DATASET.OWN.MATCH_CLASSNAMES") else "xd"
    return "xd"


class Cells(OrderedDict):
    """collect()'s cells, `own_targets` {target of one's own: "xd" or "dg"} and `track_notes` {(trainer, cfg): what
    its track's tables say about it} (methods of a results track, e.g. PromptKD's distillation track)."""

    own_targets = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.track_notes = {}


def track_of(trainer):
    """The results track a trainer declares ("": the inductive methods; a trainer no longer declared: "")."""
    methods = layout.declared_methods()
    return methods[trainer].track if trainer in methods else ""


def track_note(trainer, directory):
    """The method's own words on a group of runs of its track (PromptKD: its teacher's backbone), from the
    config.yaml of the group's first seed folder that has one."""
    for seed_dir in _subdirs(directory):
        recorded = run_folder.recorded_config(osp.join(directory, seed_dir))
        if recorded is not None:
            return layout.method(trainer).track_note(recorded)
    return ""


def split_tracks(cells):
    """{track: Cells} ("" first: the inductive methods), each with the own targets and track notes of `cells`."""
    tracks = OrderedDict([("", Cells())])
    for key, cell in cells.items():
        tracks.setdefault(track_of(key[1]), Cells())[key] = cell
    for part in tracks.values():
        part.own_targets = getattr(cells, "own_targets", None)
        part.track_notes = getattr(cells, "track_notes", {})
    return tracks


# ----------------------------------------------------------------------------- tables
class Table:
    """A titled grid of strings (Markdown) plus its cells in long form (CSV rows)."""

    def __init__(self, name, title, columns, note=""):
        self.name, self.title, self.columns, self.note = name, title, columns, note
        self.rows, self.records = [], []

    def add_row(self, label, values):
        self.rows.append([label] + ["" if v is None else str(v) for v in values])

    def record(self, source, method, dataset, shots, metric, value):
        if value is None:
            return
        if isinstance(value, Cell):
            seeds = " ".join(f"{k}={v}" for k, v in value.per_seed.items())
            mean, std, n = value.mean, value.std, value.n
        else:
            mean, std, n, seeds = value, "", "", ""
        self.records.append(dict(table=self.name, source=source, method=method, dataset=dataset, shots=shots,
                                 metric=metric, mean=round(mean, 4), std=std if std == "" else round(std, 4),
                                 n=n, seeds=seeds))

    def markdown(self):
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def method_labels(cells, protocol):
    """{(trainer, cfg): label}; the config joins the label only when a trainer has several."""
    methods = sorted({(k[1], k[2]) for k in cells if k[0] == protocol})
    per_trainer = {}
    for trainer, cfg in methods:
        per_trainer.setdefault(trainer, []).append(cfg)
    return OrderedDict(((t, c), t if len(per_trainer[t]) == 1 else f"{t} ({c})") for t, c in methods)


def fewshot_by_label(cells):
    """{(label, shots, dataset): Cell}: the label is the trainer, plus the config when a trainer has several
    at one shots value (CoOp's default config changes with the shots: its curve is still one line)."""
    fewshot = {k: v for k, v in cells.items() if k[0] == "fewshot"}
    out = OrderedDict()
    for shots in sorted({k[4] for k in fewshot}):
        at_shots = {k: v for k, v in fewshot.items() if k[4] == shots}
        for (trainer, cfg), label in method_labels(at_shots, "fewshot").items():
            for k, v in at_shots.items():
                if (k[1], k[2]) == (trainer, cfg):
                    out[(label, shots, k[3])] = v
    return out


def ordered_datasets(names, reference):
    return [d for d in reference if d in names] + sorted(d for d in names if d not in reference)


def subset_note(shown, full):
    if len(shown) == len(full):
        return ""
    return f"Averages over the {len(shown)} of {len(full)} datasets shown (the paper rows' too)."


def fmt(value):
    return f"{value:.2f}"


def average_of(cells_by_dataset, datasets):
    """Mean over the datasets of the cells' means, and a label saying how many columns it covers."""
    present = [cells_by_dataset[d].mean for d in datasets if d in cells_by_dataset]
    if not present:
        return None, None
    mean = float(np.mean(present))
    return mean, fmt(mean) + ("" if len(present) == len(datasets) else f" ({len(present)}/{len(datasets)})")


def fewshot_tables(cells):
    """One table per shots value; zero-shot CLIP (evaluation/ZeroshotCLIP on the 11 datasets) in each."""
    fewshot = fewshot_by_label(cells)
    zero_shot = {k[3]: v for k, v in cells.items()
                 if k[0] == "xd" and k[1] == layout.ZERO_SHOT and k[3] in layout.DATASETS_11}
    tables = []
    for shots in sorted({k[1] for k in fewshot}):
        datasets = ordered_datasets({k[2] for k in fewshot if k[1] == shots}, layout.DATASETS_11)
        table = Table(f"fewshot_{shots}", f"Few-shot recognition, {shots} shots (accuracy %, mean ± std over seeds)",
                      ["Method"] + datasets + ["Average"], subset_note(datasets, layout.DATASETS_11))
        labels = list(OrderedDict.fromkeys(k[0] for k in fewshot if k[1] == shots))
        rows = [(label, "ours", {k[2]: v for k, v in fewshot.items() if k[:2] == (label, shots)}) for label in labels]
        if zero_shot:
            rows.insert(0, ("ZeroshotCLIP (zero-shot)", "ours", zero_shot))
        if shots == 16:
            rows += [(f"{name} (paper)", "paper", row) for name, row in published.FEWSHOT_16.items()]
        for label, source, by_dataset in rows:
            if source == "paper":
                known = [d for d in datasets if d in by_dataset]  # a dataset beyond the paper's 11 has no number
                row_values = [fmt(by_dataset[d]) if d in by_dataset else "-" for d in datasets]
                average = by_dataset["average"] if len(known) == 11 else np.mean([by_dataset[d] for d in known])
                table.add_row(label, row_values + [fmt(average)])
                for d in known:
                    table.record(source, label, d, shots, "accuracy", by_dataset[d])
                continue
            mean, text = average_of(by_dataset, datasets)
            table.add_row(label, [by_dataset.get(d) for d in datasets] + [text])
            for d in datasets:
                table.record(source, label, d, shots, "accuracy", by_dataset.get(d))
            table.record(source, label, "average", shots, "accuracy", mean)
        tables.append(table)
    return tables


def base2new_summary(cells, hm_convention="avg"):
    """{label: {"datasets": {d: {"base", "new", "hm"}}, "average": {"base", "new", "hm"}, "n": N}} (means only)."""
    b2n = {k: v for k, v in cells.items() if k[0] == "base2new"}
    summary = OrderedDict()
    for (trainer, cfg), label in method_labels(b2n, "base2new").items():
        per_dataset = OrderedDict()
        for d in ordered_datasets({k[3] for k in b2n if (k[1], k[2]) == (trainer, cfg)}, layout.DATASETS_11):
            base = [v for k, v in b2n.items() if (k[1], k[2], k[3], k[5]) == (trainer, cfg, d, "base")]
            new = [v for k, v in b2n.items() if (k[1], k[2], k[3], k[5]) == (trainer, cfg, d, "new")]
            if base and new:
                per_dataset[d] = {"base": base[0], "new": new[0], "hm": harmonic_mean(base[0].mean, new[0].mean)}
        if not per_dataset:
            continue
        avg_base = float(np.mean([v["base"].mean for v in per_dataset.values()]))
        avg_new = float(np.mean([v["new"].mean for v in per_dataset.values()]))
        if hm_convention == "avg":
            avg_hm = harmonic_mean(avg_base, avg_new)
        else:
            avg_hm = float(np.mean([v["hm"] for v in per_dataset.values()]))
        summary[label] = {"datasets": per_dataset, "average": {"base": avg_base, "new": avg_new, "hm": avg_hm},
                          "n": len(per_dataset)}
    return summary


def base2new_tables(cells, hm_convention="avg", paper=None):
    summary = base2new_summary(cells, hm_convention)
    if not summary:
        return [], summary
    note = f"HM convention: {HM_CONVENTIONS[hm_convention]}."
    average = Table("base2new_average", "Base-to-new generalisation, average over datasets (accuracy %)",
                    ["Method", "Datasets", "Base", "New", "HM"], note)
    paper = published.BASE2NEW_AVERAGE if paper is None else paper
    for label, entry in summary.items():
        avg = entry["average"]
        average.add_row(label, [entry["n"], fmt(avg["base"]), fmt(avg["new"]), fmt(avg["hm"])])
        for metric in ("base", "new", "hm"):
            average.record("ours", label, "average", 16, metric, avg[metric])
    for name, avg in paper.items():
        average.add_row(f"{name} (paper)", [11, fmt(avg["base"]), fmt(avg["new"]), fmt(avg["hm"])])
        for metric in ("base", "new", "hm"):
            average.record("paper", f"{name} (paper)", "average", 16, metric, avg[metric])
    tables = [average]
    datasets = ordered_datasets({d for e in summary.values() for d in e["datasets"]}, layout.DATASETS_11)
    for d in datasets:
        table = Table(f"base2new_{d}", f"Base-to-new on {d} (accuracy %, mean ± std over seeds; HM of the means)",
                      ["Method", "Base", "New", "HM"])
        for label, entry in summary.items():
            if d in entry["datasets"]:
                v = entry["datasets"][d]
                table.add_row(label, [v["base"], v["new"], fmt(v["hm"])])
                table.record("ours", label, d, 16, "base", v["base"])
                table.record("ours", label, d, 16, "new", v["new"])
                table.record("ours", label, d, 16, "hm", v["hm"])
        tables.append(table)
    return tables, summary


def transfer_table(cells, name, title, targets, paper):
    """Cross-dataset or DG: source ImageNet, the targets present, their average."""
    xd = {k: v for k, v in cells.items() if k[0] == "xd"}
    found = {k[3] for k in xd if k[3] in targets}
    if not found:
        return None
    columns = ordered_datasets(found, targets)
    table = Table(name, title, ["Method", "Source: imagenet"] + columns + ["Target average"],
                  subset_note(columns, targets))
    for (trainer, cfg), label in method_labels(xd, "xd").items():
        by_dataset = {k[3]: v for k, v in xd.items() if (k[1], k[2]) == (trainer, cfg)}
        if not any(d in by_dataset for d in columns):
            continue
        mean, text = average_of(by_dataset, columns)
        table.add_row(label, [by_dataset.get(layout.SOURCE_DATASET)] + [by_dataset.get(d) for d in columns] + [text])
        for d in [layout.SOURCE_DATASET] + columns:
            if d in by_dataset:
                table.record("ours", label, d, 16, "accuracy", by_dataset[d])
        table.record("ours", label, "target_average", 16, "accuracy", mean)
    for paper_name, row in paper.items():
        known = [d for d in columns if d in row]  # a target of one's own has no published number
        if not known:
            continue
        average = row.get("average", np.mean([row[d] for d in targets]))
        if known != list(targets):
            average = np.mean([row[d] for d in known])
        table.add_row(f"{paper_name} (paper)", [fmt(row["imagenet"]) if "imagenet" in row else "-"] +
                      [fmt(row[d]) if d in row else "-" for d in columns] + [fmt(average)])
        for d in ["imagenet"] * ("imagenet" in row) + known:
            table.record("paper", f"{paper_name} (paper)", d, 16, "accuracy", row[d])
    return table


def build_tables(cells, hm_convention="avg"):
    """The inductive methods' tables, then each results track's own (never averaged with them)."""
    tracks = split_tracks(cells)
    tables, summary = inductive_tables(tracks.pop(""), hm_convention)
    for track, part in tracks.items():
        for table in track_tables(part, track, hm_convention):
            tables.append(table)
    return tables, summary


def track_tables(cells, track, hm_convention="avg"):
    """A results track's base-to-new and cross-dataset tables: named and titled by the track, with its published
    rows (mmpt.experiments.published.TRACKS) and a note on each method (its teacher)."""
    paper = published.TRACKS.get(track, {})
    notes = "; ".join(f"{trainer} ({cfg}): {note}" for (trainer, cfg), note in cells.track_notes.items()
                      if note and any(k[1:3] == (trainer, cfg) for k in cells))
    tables = base2new_tables(cells, hm_convention, paper=paper.get("base2new", {}))[0]
    xd = transfer_table(cells, "cross_dataset", "Cross-dataset transfer (accuracy %)", layout.XD_TARGETS,
                        paper.get("cross_dataset", {}))
    tables += [xd] if xd is not None else []
    for table in tables:
        table.name = f"{track}_{table.name}"
        table.title += f" -- {track} track"
        table.note = " ".join(part for part in (
            f"The {track} track: transductive (trains on unlabeled images of every class it is tested on) and "
            f"taught by another model; not averaged or compared with the inductive methods' tables.",
            f"{notes}." if notes else "", table.note) if part)
    return tables


def inductive_tables(cells, hm_convention="avg"):
    tables = fewshot_tables(cells)
    b2n, summary = base2new_tables(cells, hm_convention)
    tables += b2n
    own = getattr(cells, "own_targets", None) or {}
    for table in (transfer_table(cells, "cross_dataset", "Cross-dataset transfer (train ImageNet, accuracy %)",
                                 layout.XD_TARGETS + sorted(d for d, p in own.items() if p == "xd"),
                                 published.CROSS_DATASET),
                  transfer_table(cells, "domain_generalisation", "Domain generalisation (train ImageNet, accuracy %)",
                                 layout.DG_TARGETS + sorted(d for d, p in own.items() if p == "dg"),
                                 published.DOMAIN_GENERALISATION)):
        if table is not None:
            tables.append(table)
    return tables, summary


# ----------------------------------------------------------------------------- plots
def plot_fewshot(cells, path):
    """Accuracy vs shots, one panel per dataset (+ the average over datasets), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fewshot = fewshot_by_label(cells)
    if not fewshot:
        return None
    labels = list(OrderedDict.fromkeys(k[0] for k in fewshot))
    all_shots = sorted({k[1] for k in fewshot})
    datasets = ordered_datasets({k[2] for k in fewshot}, layout.DATASETS_11)
    panels = datasets + (["average"] if len(datasets) > 1 else [])
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label in labels:
            points = []
            for shots in all_shots:
                if panel == "average":
                    values = [v.mean for k, v in fewshot.items() if k[:2] == (label, shots)]
                    if len(values) == len(datasets):
                        points.append((shots, np.mean(values), 0.0))
                elif (label, shots, panel) in fewshot:
                    cell = fewshot[(label, shots, panel)]
                    points.append((shots, cell.mean, cell.std))
            if points:
                x, y, e = zip(*points)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
            name = published.paper_name(label.split(" ")[0])
            paper = published.FEWSHOT_16.get(name, {}) if name else {}
            if panel in paper:
                ax.plot([16], [paper[panel]], marker="*", markersize=10, linestyle="none", color="gray")
        ax.set_title(panel)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16])
        ax.set_xticklabels(["1", "2", "4", "8", "16"])
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, title="* = paper, 16 shots", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_base2new(summary, path, hm_convention="avg"):
    """Grouped bars of the average base / new / HM per method, ours and the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summary:
        return None
    bars = [(label, entry["average"]) for label, entry in summary.items()]
    bars += [(f"{name} (paper)", avg) for name, avg in published.BASE2NEW_AVERAGE.items()]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(bars)), 4))
    x = np.arange(len(bars))
    for i, metric in enumerate(("base", "new", "hm")):
        ax.bar(x + (i - 1) * 0.27, [avg[metric] for _, avg in bars], width=0.27, label=metric.upper()
               if metric == "hm" else metric.capitalize())
    ax.set_xticks(x)
    ax.set_xticklabels([label for label, _ in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Base-to-new, average over datasets ({hm_convention} HM)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- command line
def write_report(output_root, out_dir=None, hm_convention="avg", echo=print):
    """Collect, print and write the tables and plots; returns {"tables", "summary", "files"}."""
    if not osp.isdir(output_root):
        raise FileNotFoundError(f"mmpt.results: output folder not found: {output_root}")
    out_dir = out_dir or osp.join(output_root, "results")
    os.makedirs(out_dir, exist_ok=True)
    cells = collect(output_root)
    tables, summary = build_tables(cells, hm_convention)
    header = (f"## Results of {output_root}\n\nmean ± std over seeds (std: numpy, ddof 0); `(paper)` rows: "
              f"{published.sources_note()}.\n")
    markdown = header + "\n" + ("\n".join(t.markdown() for t in tables) if tables else
                                "No finished runs found (no log.txt with '* accuracy:').\n")
    files = {"markdown": osp.join(out_dir, "results.md"), "csv": osp.join(out_dir, "results.csv")}
    with open(files["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown)
    fields = ["table", "source", "method", "dataset", "shots", "metric", "mean", "std", "n", "seeds"]
    with open(files["csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for table in tables:
            writer.writerows(table.records)
    curves = plot_fewshot(cells, osp.join(out_dir, "fewshot_curves.png"))
    bars = plot_base2new(summary, osp.join(out_dir, "base2new_bars.png"), hm_convention)
    files.update({k: v for k, v in (("fewshot_curves", curves), ("base2new_bars", bars)) if v})
    echo(markdown)
    echo("Wrote " + ", ".join(files.values()))
    return {"tables": tables, "summary": summary, "files": files, "cells": cells}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mmpt.results", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("output_root", help="the output tree (e.g. output)")
    p.add_argument("--out", default=None, help="folder for results.md / .csv / *.png (default OUTPUT_ROOT/results)")
    p.add_argument("--hm-convention", choices=list(HM_CONVENTIONS), default="avg")
    args = p.parse_args(argv)
    try:
        write_report(args.output_root, args.out, args.hm_convention)
    except (FileNotFoundError, ConfigError) as e:  # ConfigError: a corrupt result record, named
        sys.exit(f"mmpt.results: error: {e}" if isinstance(e, ConfigError) else str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
