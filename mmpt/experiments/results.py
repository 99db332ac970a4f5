"""Turn an output tree into the paper's tables and plots: `python -m mmpt.results OUTPUT_ROOT`.

    python -m mmpt.results output                        # prints Markdown; writes output/results/*
    python -m mmpt.results output --out report --hm-convention per-dataset

Reads the layout of mmpt.experiments.layout (scripts/<trainer>/*.sh and mmpt.sweep write it): the numbers of each
run folder come from its result record (result.json, mmpt.experiments.record), and writes into --out (default
OUTPUT_ROOT/results):
  results.md            per protocol and per world (backbone; the toy world and random backbones apart): few-shot
                        accuracy per shots, base / new / HM per dataset and averaged, cross-dataset, domain
                        generalisation, and what the runs cost; cells are mean ± std over seeds (numpy std, ddof 0,
                        as CoOp's parser) with the seed count, no ± for one seed; a published number
                        (mmpt.experiments.published) stands beside ours only on its backbone, dataset and protocol
  results.csv           every cell in long form (table, world, source, method, dataset, shots, metric, mean, std, n,
                        seeds)
  fewshot_curves.png    accuracy vs shots per dataset (and the average)
  base2new_bars.png     average base / new / HM per method, one panel per world
  hm_vs_train_time.png  average HM against the average training time per dataset, one point per method (as MPL's
                        Figure 2), one panel per world
A cell averages only runs of one config (mmpt.experiments.config_groups); runs of another config are listed
apart with the keys that differ. HM conventions: "avg" (default; CoCoOp, MaPLe, PromptSRC, MuDPT): the harmonic
mean of the average base and the average new accuracy; "per-dataset" (HPT, RPO): the mean of the per-dataset
harmonic means. A dataset's own HM is the harmonic mean of its mean base and mean new accuracy in both.
"""
import argparse
import csv
import os
import os.path as osp
import re
import sys
import textwrap
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from dassl.errors import ConfigError
from mmpt import run_folder
from mmpt.experiments import config_groups, layout, published, record

HM_CONVENTIONS = {
    "avg": "HM = harmonic mean of the average base and the average new accuracy (CoCoOp / MaPLe / MuDPT)",
    "per-dataset": "HM = mean of the per-dataset harmonic means (HPT / RPO)",
}
MIN_SEEDS_TO_JUDGE = 3  # fewer seeds than this: no mark says whether a published value lies within our spread
OUTSIDE_MARK = "†"
TOO_FEW_MARK = "?"
MARKS_NOTE = (f"{OUTSIDE_MARK}: the published value lies outside our mean ± 2 std; {TOO_FEW_MARK}: fewer than "
              f"{MIN_SEEDS_TO_JUDGE} seeds, too few to say.")
TOY_BACKBONE = "toy-ViT"  # mmpt.toy_clip.NAME (not imported: it loads torch)
RANDOM_PREFIX = "random-"  # mmpt.clip_backbone.RANDOM_PREFIX (not imported: it loads torch)
STANDARD_TRACK = record.STANDARD_TRACK


def harmonic_mean(a, b):
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


# ----------------------------------------------------------------------------- what a run ran on
@dataclass(frozen=True)
class World:
    """What the runs of a cell ran on: the toy world, a random backbone, a real backbone, or not recorded."""

    kind: str  # "toy" | "random" | "real" | "unknown"
    backbone: str
    track: str = STANDARD_TRACK  # the method's declared track (env.track of its records), e.g. "transductive"

    @property
    def label(self):
        if self.kind == "toy":
            label = f"toy world, {self.backbone}"
        elif self.kind == "random":
            label = f"random backbone {self.backbone} (tests the pipeline, not the methods)"
        elif self.kind == "unknown":
            label = "backbone not recorded (no config.yaml)"
        else:
            label = self.backbone
        return label if self.track == STANDARD_TRACK else f"{label}, {self.track} track"

    @property
    def short(self):
        short = {"toy": "toy world", "unknown": "backbone not recorded"}.get(self.kind, self.backbone)
        return short if self.track == STANDARD_TRACK else f"{short}, {self.track}"

    @property
    def comparable(self):
        """Whether published numbers may stand beside these runs' (the papers' backbone, the standard track)."""
        return self.kind == "real" and self.backbone == published.BACKBONE and self.track == STANDARD_TRACK

    def order(self):
        return ({"real": 0, "unknown": 1, "toy": 2, "random": 3}[self.kind], not self.comparable, self.backbone,
                self.track != STANDARD_TRACK, self.track)


def world_of(config, track=STANDARD_TRACK):
    """The World of a recorded (identity) config, or of none, for a method of `track`."""
    if not config:
        return World("unknown", "", track)
    backbone = str(config.get("MODEL.BACKBONE.NAME", ""))
    from mmpt.data.toy_world import DATASETS as TOY_DATASETS

    if backbone == TOY_BACKBONE or config.get("DATASET.NAME") in TOY_DATASETS:
        return World("toy", backbone, track)
    if backbone.startswith(RANDOM_PREFIX):
        return World("random", backbone, track)
    return World("real", backbone, track)


# ----------------------------------------------------------------------------- cells
class Cell:
    """The values of one (method, dataset, shots, metric) over the seeds of one config."""

    def __init__(self, per_seed, config=None, records=None):
        self.per_seed = OrderedDict(per_seed)
        values = list(self.per_seed.values())
        self.mean = float(np.mean(values))
        self.std = float(np.std(values))
        self.n = len(values)
        self.config = config  # the runs' recorded config less the keys that cannot change results (None: none)
        self.records = OrderedDict(records or {})  # {seed folder: RunResult}
        tracks = {r.env.get("track", STANDARD_TRACK) for r in self.records.values()}
        self.world = world_of(config, tracks.pop() if len(tracks) == 1 else STANDARD_TRACK)

    def __str__(self):
        return fmt_spread(self.mean, self.std, self.n)


def fmt(value):
    return f"{value:.2f}"


def fmt_spread(mean, std, n):
    """`mean ± std (n=N)`; one seed: `mean (n=1)` (a std of one value says nothing)."""
    return f"{mean:.2f} (n=1)" if n == 1 else f"{mean:.2f} ± {std:.2f} (n={n})"


def mark(mean, std, n, value):
    """The mark of a published `value` against our mean ± 2 std over n seeds."""
    if n < MIN_SEEDS_TO_JUDGE:
        return " " + TOO_FEW_MARK
    return " " + OUTSIDE_MARK if abs(value - mean) > 2 * std else ""


def _subdirs(path):
    return sorted(d for d in os.listdir(path) if osp.isdir(osp.join(path, d))) if osp.isdir(path) else []


def _cells(directory):
    """(Cell of the main config, [(line, Cell)] of the other configs) of a folder of seed folders: each seed
    folder's finished result record (a folder without one is left out; a corrupt one stops with one line naming
    it), grouped by recorded config (mmpt.experiments.config_groups)."""
    finished = OrderedDict()
    for name in _subdirs(directory):
        result = record.read_result(osp.join(directory, name))
        if result is not None and result.finished:
            finished[osp.join(directory, name)] = result
    groups = config_groups.group_runs(list(finished))
    if not groups:
        return None, []

    def cell(group):
        return Cell([(osp.basename(d), finished[d].accuracy) for d in group.runs], group.config,
                    [(osp.basename(d), finished[d]) for d in group.runs])

    return cell(groups[0]), [(config_groups.describe_apart(directory, groups[0], g), cell(g)) for g in groups[1:]]


def _split_tag(trainer, tag):
    """(cfg, shots) of a cross-dataset folder tag `<cfg>_<K>shots` (ZeroshotCLIP's tag is the cfg)."""
    match = re.fullmatch(r"(.+)_(\d+)shots", tag)
    return (match.group(1), int(match.group(2))) if match and trainer != layout.ZERO_SHOT else (tag, 0)


class Cells(OrderedDict):
    """collect()'s cells; `own_targets` {target of one's own: "xd" or "dg"}; `apart` [(key, line, Cell)]: runs of
    another config than the cell's, kept out of it."""

    own_targets = None
    apart = None


def collect(output_root):
    """{(protocol, trainer, cfg, dataset, shots, metric): Cell} for every finished group of seed folders.

    protocol/metric: base2new/base, base2new/new, fewshot/accuracy, xd/accuracy (source "imagenet" and targets).
    """
    cells, own_targets = Cells(), {}
    cells.apart = []

    def add(key, directory):
        cell, apart = _cells(directory)
        if cell is not None:
            cells[key] = cell
            cells.apart += [(key, line, other) for line, other in apart]

    b2n = osp.join(output_root, "base2new")
    for stage, metric in (("train_base", "base"), ("test_base", "base"), ("test_new", "new")):
        for dataset in _subdirs(osp.join(b2n, stage)):
            for shots_dir in _subdirs(osp.join(b2n, stage, dataset)):
                shots = int(shots_dir.split("_")[-1])
                for trainer in _subdirs(osp.join(b2n, stage, dataset, shots_dir)):
                    for cfg in _subdirs(osp.join(b2n, stage, dataset, shots_dir, trainer)):
                        key = ("base2new", trainer, cfg, dataset, shots, metric)
                        if key not in cells:  # train_base (the trained model) wins over test_base
                            add(key, osp.join(b2n, stage, dataset, shots_dir, trainer, cfg))
    fs = osp.join(output_root, "fewshot")
    for dataset in _subdirs(fs):
        for shots_dir in _subdirs(osp.join(fs, dataset)):
            for trainer in _subdirs(osp.join(fs, dataset, shots_dir)):
                for cfg in _subdirs(osp.join(fs, dataset, shots_dir, trainer)):
                    add(("fewshot", trainer, cfg, dataset, int(shots_dir.split("_")[-1]), "accuracy"),
                        osp.join(fs, dataset, shots_dir, trainer, cfg))
    source = osp.join(output_root, layout.SOURCE_DATASET)
    for trainer in _subdirs(source):
        for tag in _subdirs(osp.join(source, trainer)):
            cfg, shots = _split_tag(trainer, tag)
            add(("xd", trainer, cfg, layout.SOURCE_DATASET, shots, "accuracy"), osp.join(source, trainer, tag))
    evaluation = osp.join(output_root, "evaluation")
    for trainer in _subdirs(evaluation):
        for tag in _subdirs(osp.join(evaluation, trainer)):
            cfg, shots = _split_tag(trainer, tag)
            for dataset in _subdirs(osp.join(evaluation, trainer, tag)):
                key = ("xd", trainer, cfg, dataset, shots, "accuracy")
                if key not in cells:
                    add(key, osp.join(evaluation, trainer, tag, dataset))
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


def by_world(cells, protocol):
    """[(World, {key: Cell})] of the protocol's cells, the papers' backbone first, the toy world and random
    backbones last."""
    worlds = {}
    for key, cell in cells.items():
        if key[0] == protocol:
            worlds.setdefault(cell.world, OrderedDict())[key] = cell
    return sorted(worlds.items(), key=lambda item: item[0].order())


def titled(title, world):
    return f"{title}, {world.label}"


# ----------------------------------------------------------------------------- tables
class Table:
    """A titled grid of strings (Markdown) plus its cells in long form (CSV rows)."""

    def __init__(self, name, title, columns, note="", world=None):
        self.name, self.title, self.columns, self.world = name, title, columns, world
        self.notes = [note] if note else []
        self.rows, self.records = [], []
        self.sources = OrderedDict()  # published rows shown: label -> source

    @property
    def note(self):
        return "\n".join(self.notes)

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
        self.records.append(dict(table=self.name, world=self.world.label if self.world else "", source=source,
                                 method=method, dataset=dataset, shots=shots,
                                 metric=metric, mean=round(mean, 4), std=std if std == "" else round(std, 4),
                                 n=n, seeds=seeds))

    def markdown(self):
        lines = [f"### {self.title}", ""]
        notes = list(self.notes)
        if self.sources:
            notes.append(MARKS_NOTE + " Published: " + "; ".join(f"{label}: {source}"
                                                                  for label, source in self.sources.items()) + ".")
        for note in notes:
            lines += [note, ""]
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


def trainer_of(label):
    return label.split(" ")[0]


def ordered_datasets(names, reference):
    return [d for d in reference if d in names] + sorted(d for d in names if d not in reference)


def subset_note(shown, full):
    if len(shown) == len(full):
        return ""
    return f"{len(shown)} of the {len(full)} datasets of the protocol are present."


def average_of(cells_by_dataset, datasets):
    """Mean over the datasets of the cells' means, and a label saying how many columns it covers."""
    present = [cells_by_dataset[d].mean for d in datasets if d in cells_by_dataset]
    if not present:
        return None, None
    mean = float(np.mean(present))
    return mean, fmt(mean) + ("" if len(present) == len(datasets) else f" ({len(present)}/{len(datasets)})")


def add_method_rows(table, label, ours, shown, averaged, paper, shots, metric="accuracy", lead=()):
    """Our row of `label` ({dataset: Cell} over the columns `shown`, the mean over `averaged` last), and beside it
    the published row `paper` ((name, {dataset: value}) or None) on the datasets present on both sides, each
    value marked against our spread; both averages then cover only those datasets, and a note says which.
    `lead`: columns before the datasets (not averaged), e.g. the source dataset."""
    columns = list(lead) + list(shown)
    known = {} if paper is None else {d: v for d, v in paper[1].items() if d in columns and d in ours}
    common = [d for d in averaged if d in known]
    if known:
        mean = float(np.mean([ours[d].mean for d in common])) if common else None
        text = None if mean is None else fmt(mean) + ("" if len(common) == len(averaged) else f" ({len(common)}/"
                                                                                               f"{len(averaged)})")
    else:
        mean, text = average_of(ours, averaged)
    table.add_row(label, [ours.get(d) for d in columns] + [text])
    for d in columns:
        table.record("ours", label, d, shots, metric, ours.get(d))
    table.record("ours", label, "average", shots, metric, mean)
    if not known:
        return
    name, row = paper
    paper_label = f"{name} (paper)"
    table.sources[paper_label] = published.source_of(name)
    values = [fmt(known[d]) + mark(ours[d].mean, ours[d].std, ours[d].n, known[d]) if d in known else "-"
              for d in columns]
    paper_mean = float(np.mean([known[d] for d in common])) if common else None
    table.add_row(paper_label, values + ["" if paper_mean is None else fmt(paper_mean)])
    for d in known:
        table.record("paper", paper_label, d, shots, metric, known[d])
    table.record("paper", paper_label, "average", shots, metric, paper_mean)
    if common and len(common) < len(averaged):
        table.notes.append(f"{label} and {paper_label}: averages over {', '.join(common)} only (the "
                           f"dataset{'s' if len(common) > 1 else ''} on both sides).")


def paper_row(world, shots, trainer, rows):
    """(name, {dataset: value}) of the published row of `trainer` in `rows` when the runs can stand beside it
    (the papers' backbone and shots), else None."""
    name = published.paper_name(trainer)
    if not world.comparable or shots != published.SHOTS or name not in rows:
        return None
    return name, {d: v for d, v in rows[name].items() if d != "average"}


def fewshot_tables(cells):
    """One table per world and shots value; zero-shot CLIP (evaluation/ZeroshotCLIP on the 11 datasets) in each."""
    tables = []
    for world, world_cells in by_world(cells, "fewshot"):
        fewshot = fewshot_by_label(world_cells)
        zero_shot = {k[3]: v for k, v in cells.items() if k[0] == "xd" and k[1] == layout.ZERO_SHOT
                     and k[3] in layout.DATASETS_11 and v.world == world}
        for shots in sorted({k[1] for k in fewshot}):
            datasets = ordered_datasets({k[2] for k in fewshot if k[1] == shots}, layout.DATASETS_11)
            suffix = "" if world.comparable or len(by_world(cells, "fewshot")) == 1 else "_" + slug(world.short)
            table = Table(f"fewshot_{shots}{suffix}", titled(f"Few-shot recognition, {shots} shots (accuracy %, "
                                                             f"mean ± std over seeds)", world),
                          ["Method"] + datasets + ["Average"],
                          subset_note(datasets, layout.DATASETS_11) if world.comparable else "", world)
            labels = list(OrderedDict.fromkeys(k[0] for k in fewshot if k[1] == shots))
            rows = [(label, {k[2]: v for k, v in fewshot.items() if k[:2] == (label, shots)}) for label in labels]
            if zero_shot:
                rows.insert(0, (f"{layout.ZERO_SHOT} (zero-shot)", zero_shot))
            for label, ours in rows:
                add_method_rows(table, label, ours, datasets, datasets,
                                paper_row(world, shots, trainer_of(label), published.FEWSHOT_16), shots)
            tables.append(table)
    return tables


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def seed_spread(per_dataset, hm_convention):
    """({"base", "new", "hm": std over seeds}, seed count) of the average over datasets, over the seeds present
    in every dataset's base and new cell (each seed's average is computed as the table's)."""
    seeds = None
    for v in per_dataset.values():
        here = set(v["base"].per_seed) & set(v["new"].per_seed)
        seeds = here if seeds is None else seeds & here
    seeds = sorted(seeds or [])
    if len(seeds) < 2:
        return {"base": 0.0, "new": 0.0, "hm": 0.0}, len(seeds)
    per_seed = {"base": [], "new": [], "hm": []}
    for s in seeds:
        base = [v["base"].per_seed[s] for v in per_dataset.values()]
        new = [v["new"].per_seed[s] for v in per_dataset.values()]
        per_seed["base"].append(np.mean(base))
        per_seed["new"].append(np.mean(new))
        per_seed["hm"].append(harmonic_mean(np.mean(base), np.mean(new)) if hm_convention == "avg" else
                              np.mean([harmonic_mean(b, n) for b, n in zip(base, new)]))
    return {k: float(np.std(v)) for k, v in per_seed.items()}, len(seeds)


def base2new_summary(cells, hm_convention="avg"):
    """{label: {"datasets": {d: {"base", "new", "hm"}}, "average": {"base", "new", "hm"}, "n": N, "world": World,
    "trainer", "spread": {metric: std over seeds}, "seeds": complete seeds}} (means; a label that stands in several
    worlds is completed with the world)."""
    summary = OrderedDict()
    worlds = by_world(cells, "base2new")
    all_labels = [label for _, b2n in worlds for label in method_labels(b2n, "base2new").values()]
    for world, b2n in worlds:
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
            spread, seeds = seed_spread(per_dataset, hm_convention)
            key = label if all_labels.count(label) == 1 else f"{label} [{world.short}]"
            summary[key] = {"datasets": per_dataset, "average": {"base": avg_base, "new": avg_new, "hm": avg_hm},
                            "n": len(per_dataset), "world": world, "trainer": trainer, "cfg": cfg, "spread": spread,
                            "seeds": seeds, "label": label}
    return summary


def comparable_average(entry):
    """The published base-to-new average of a summary entry when it may stand beside ours (the papers' backbone,
    and the papers' 11 datasets all present: the published averages are over them), else None. A results track
    (PromptKD's distillation track) has its own published rows (published.TRACKS), shown beside its runs only."""
    world = entry["world"]
    if not set(layout.DATASETS_11) <= set(entry["datasets"]):
        return None
    if world.track != STANDARD_TRACK:
        rows = published.TRACKS.get(world.track, {}).get("base2new", {})
        on_papers_backbone = world.kind == "real" and world.backbone == published.BACKBONE
        return (entry["trainer"], rows[entry["trainer"]]) if on_papers_backbone and entry["trainer"] in rows else None
    name = published.paper_name(entry["trainer"])
    if not world.comparable or name not in published.BASE2NEW_AVERAGE:
        return None
    return name, published.BASE2NEW_AVERAGE[name]


def track_note(cells, world):
    """What a results track's tables say about their runs: the track's nature and each method's own words on its
    runs (PromptKD: the teacher's backbone and the checkpoint selection), from the recorded configs; "" for the
    standard track."""
    if world.track == STANDARD_TRACK:
        return ""
    notes = OrderedDict()
    for key, cell in cells.items():
        trainer = key[1]
        if cell.world == world and cell.config and trainer in layout.declared_methods():
            notes.setdefault((trainer, key[2]), layout.method(trainer).track_note(cell.config))
    said = "; ".join(f"{trainer} ({cfg}): {note}" for (trainer, cfg), note in notes.items() if note)
    return (f"The {world.track} track: transductive (trains on unlabeled images of every class it is tested on) and "
            f"taught by another model; never averaged or ranked with the standard track's tables."
            + (f" {said}." if said else ""))


def base2new_tables(cells, hm_convention="avg"):
    summary = base2new_summary(cells, hm_convention)
    tables = []
    worlds = list(OrderedDict.fromkeys(entry["world"] for entry in summary.values()))
    for world in worlds:
        entries = [(e["label"], e) for e in summary.values() if e["world"] == world]
        suffix = "" if world.comparable or len(worlds) == 1 else "_" + slug(world.short)
        average = Table(f"base2new_average{suffix}",
                        titled("Base-to-new generalisation, average over datasets (accuracy %)", world),
                        ["Method", "Datasets", "Base", "New", "HM", "Seeds"],
                        f"HM convention: {HM_CONVENTIONS[hm_convention]}. ±: the std over seeds of each seed's "
                        f"average (the seeds present in every dataset: column Seeds).", world)
        short = []
        for label, entry in entries:
            avg, spread, seeds = entry["average"], entry["spread"], entry["seeds"]
            average.add_row(label, [entry["n"]] + [fmt(avg[m]) if seeds < 2 else f"{avg[m]:.2f} ± {spread[m]:.2f}"
                                                   for m in ("base", "new", "hm")] + [seeds])
            for metric in ("base", "new", "hm"):
                average.record("ours", label, "average", 16, metric, avg[metric])
            paper = comparable_average(entry)
            if paper is not None:
                name, values = paper
                average.sources[f"{name} (paper)"] = (published.source_of(name) if world.track == STANDARD_TRACK
                                                      else published.TRACK_SOURCES[world.track])
                average.add_row(f"{name} (paper)", [11] + [fmt(values[m]) + mark(avg[m], spread[m], seeds, values[m])
                                                           for m in ("base", "new", "hm")] + [""])
                for metric in ("base", "new", "hm"):
                    average.record("paper", f"{name} (paper)", "average", 16, metric, values[metric])
            elif world.comparable and published.paper_name(entry["trainer"]) in published.BASE2NEW_AVERAGE:
                short.append(f"{label} ({entry['n']})")
        note = track_note(cells, world)
        if note:
            average.notes.append(note)
        if short:
            average.notes.append(f"The published base-to-new averages are over the {len(layout.DATASETS_11)} "
                                 f"datasets; not shown beside {', '.join(short)}, which cover fewer.")
        tables.append(average)
        datasets = ordered_datasets({d for _, e in entries for d in e["datasets"]}, layout.DATASETS_11)
        for d in datasets:
            table = Table(f"base2new_{d}{suffix}", titled(f"Base-to-new on {d} (accuracy %, mean ± std over seeds; "
                                                          f"HM of the means)", world), ["Method", "Base", "New", "HM"],
                          world=world)
            for label, entry in entries:
                if d in entry["datasets"]:
                    v = entry["datasets"][d]
                    table.add_row(label, [v["base"], v["new"], fmt(v["hm"])])
                    table.record("ours", label, d, 16, "base", v["base"])
                    table.record("ours", label, d, 16, "new", v["new"])
                    table.record("ours", label, d, 16, "hm", v["hm"])
            tables.append(table)
    return tables, summary


def transfer_tables(cells, name, title, targets, paper):
    """Cross-dataset or DG per world: source ImageNet, the targets present, their average."""
    tables = []
    worlds = by_world(cells, "xd")
    for world, xd in worlds:
        found = {k[3] for k in xd if k[3] in targets}
        if not found:
            continue
        columns = ordered_datasets(found, targets)
        suffix = "" if world.comparable or len(worlds) == 1 else "_" + slug(world.short)
        table = Table(name + suffix, titled(title, world),
                      ["Method", "Source: imagenet"] + columns + ["Target average"],
                      subset_note(columns, targets) if world.comparable else "", world)
        for (trainer, cfg), label in method_labels(xd, "xd").items():
            by_dataset = {k[3]: v for k, v in xd.items() if (k[1], k[2]) == (trainer, cfg)}
            if not any(d in by_dataset for d in columns):
                continue
            shots = next(k[4] for k in xd if (k[1], k[2]) == (trainer, cfg))
            row = paper_row(world, published.SHOTS if trainer == layout.ZERO_SHOT else shots, trainer, paper)
            add_method_rows(table, label, by_dataset, columns, columns, row, 16, lead=[layout.SOURCE_DATASET])
        note = track_note(cells, world)
        if note:
            table.notes.append(note)
        tables.append(table)
    return tables


def build_tables(cells, hm_convention="avg"):
    tables = fewshot_tables(cells)
    b2n, summary = base2new_tables(cells, hm_convention)
    tables += b2n
    own = getattr(cells, "own_targets", None) or {}
    tables += transfer_tables(cells, "cross_dataset", "Cross-dataset transfer (train ImageNet, accuracy %)",
                              layout.XD_TARGETS + sorted(d for d, p in own.items() if p == "xd"),
                              published.CROSS_DATASET)
    tables += transfer_tables(cells, "domain_generalisation", "Domain generalisation (train ImageNet, accuracy %)",
                              layout.DG_TARGETS + sorted(d for d, p in own.items() if p == "dg"),
                              published.DOMAIN_GENERALISATION)
    return tables, summary


# ----------------------------------------------------------------------------- cost
COST_COLUMNS = ["Method", "Runs", "Trainable params", "Train time / dataset (s)", "Time / epoch (s)",
                "Peak memory (MB)", "Eval time (s)", "Device", "Precision", "Deterministic"]
COST_STAGES = {"base2new": "base", "fewshot": "accuracy", "xd": "accuracy"}  # the metric whose cell trained


def method_costs(cells, protocol):
    """[(World, (trainer, cfg), label, {"runs", "trainable_params", "train_time_s", "epoch_time_s", "peak_memory_mb",
    "eval_time_s", "device", "precision", "deterministic"})] of the runs that trained (or, for a method with
    nothing to train, evaluated) each method: train time per dataset = the mean over datasets of the mean over
    seeds; the rest: the mean over runs. Runs without a cost record are left out."""
    out = []
    for world, world_cells in by_world(cells, protocol):
        for (trainer, cfg), label in method_labels(world_cells, protocol).items():
            per_dataset, records = {}, []
            for key, cell in world_cells.items():
                if (key[1], key[2], key[5]) != (trainer, cfg, COST_STAGES[protocol]):
                    continue
                if protocol == "xd" and key[3] != layout.SOURCE_DATASET and trainer != layout.ZERO_SHOT:
                    continue  # the targets only evaluate the source model
                costed = [r for r in cell.records.values() if r.cost]
                records += costed
                if costed:
                    per_dataset.setdefault(key[3], []).extend(r.cost.get("train_time_s") or 0.0 for r in costed)
            if not records:
                continue

            def mean_of(name):
                values = [r.cost[name] for r in records if r.cost.get(name) is not None]
                return float(np.mean(values)) if values else None

            def joined(name):
                return ", ".join(sorted({str(r.env.get(name, "")) for r in records}))

            out.append((world, (trainer, cfg), label, {
                "runs": len(records), "trainable_params": mean_of("trainable_params"),
                "train_time_s": float(np.mean([np.mean(v) for v in per_dataset.values()])),
                "epoch_time_s": mean_of("epoch_time_s"), "peak_memory_mb": mean_of("peak_memory_mb"),
                "eval_time_s": mean_of("eval_time_s"), "device": joined("device"), "precision": joined("precision"),
                "deterministic": joined("deterministic"), "peak_memory_kind": joined("peak_memory_kind")}))
    return out


def cost_tables(cells):
    tables = []
    for protocol, title in (("base2new", "Base-to-new"), ("fewshot", "Few-shot"), ("xd", "ImageNet training")):
        costs = method_costs(cells, protocol)
        worlds = list(OrderedDict.fromkeys(item[0] for item in costs))
        for world in worlds:
            suffix = "" if len(worlds) == 1 else "_" + slug(world.short)
            table = Table(f"cost_{protocol}{suffix}", titled(f"{title}: what the runs cost", world), COST_COLUMNS,
                          "Means over the training runs (a method with nothing to train: its evaluations); train "
                          "time: wall time of training without the final test, per dataset; peak memory: CUDA peak "
                          "allocated, or the process's peak RSS on the CPU (see Device).", world)
            for _, _, label, c in (item for item in costs if item[0] == world):
                def num(value, digits=1):
                    return "" if value is None else f"{value:,.{digits}f}"
                table.add_row(label, [c["runs"], num(c["trainable_params"], 0), num(c["train_time_s"]),
                                      num(c["epoch_time_s"], 2), num(c["peak_memory_mb"]), num(c["eval_time_s"], 2),
                                      c["device"], c["precision"], c["deterministic"]])
                for metric in ("trainable_params", "train_time_s", "epoch_time_s", "peak_memory_mb", "eval_time_s"):
                    table.record("ours", label, "cost", 16, metric, c[metric])
            tables.append(table)
    return tables


def apart_markdown(cells):
    """The runs kept out of their cells (another config), each with its accuracy."""
    apart = getattr(cells, "apart", None) or []
    if not apart:
        return ""
    lines = ["### Runs of another config (kept out of the cells above)", ""]
    lines += [f"- {line}: accuracy {other}" for _, line, other in apart]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path):
    """Write the figure (the legends outside the axes included) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def wrap(label, width=16):
    """A label on lines of at most `width` characters, broken after the commas and before the `__` of a config
    name with extra options (mmpt.run_folder.run_tag) where it can."""
    spaced = label.replace(",", ", ").replace("__", " __")
    return textwrap.fill(spaced, width, break_long_words=True, break_on_hyphens=False).replace(", ", ",").replace(" __", "__")


def plot_fewshot(cells, path):
    """Accuracy vs shots, one panel per world and dataset (+ the world's average over datasets), mean ± std over
    seeds; the published 16-shot points only in panels of the papers' backbone."""
    panels = []  # (World, dataset or "average", {(label, shots, dataset): Cell})
    for world, world_cells in by_world(cells, "fewshot"):
        fewshot = fewshot_by_label(world_cells)
        datasets = ordered_datasets({k[2] for k in fewshot}, layout.DATASETS_11)
        panels += [(world, d, fewshot) for d in datasets + (["average"] if len(datasets) > 1 else [])]
    if not panels:
        return None
    plt = _pyplot()
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    handles, colours = {}, {}
    for ax, (world, panel, fewshot) in zip(axes.flat, panels):
        datasets = {k[2] for k in fewshot}
        for label in OrderedDict.fromkeys(k[0] for k in fewshot):
            points = []
            for shots in sorted({k[1] for k in fewshot}):
                if panel == "average":
                    values = [v.mean for k, v in fewshot.items() if k[:2] == (label, shots)]
                    if len(values) == len(datasets):
                        points.append((shots, np.mean(values), 0.0))
                elif (label, shots, panel) in fewshot:
                    cell = fewshot[(label, shots, panel)]
                    points.append((shots, cell.mean, cell.std))
            if points:
                x, y, e = zip(*points)
                name = f"{label} ({world.short})"
                colour = colours.setdefault(name, f"C{len(colours) % 10}")  # one colour per method in every panel
                line = ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label, color=colour)
                handles.setdefault(name, line)
            row = paper_row(world, published.SHOTS, trainer_of(label), published.FEWSHOT_16)
            if row is not None and panel in row[1]:
                ax.plot([published.SHOTS], [row[1][panel]], marker="*", markersize=10, linestyle="none", color="gray")
        ax.set_title(wrap(f"{panel} ({world.short})", 40), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16])
        ax.set_xticklabels(["1", "2", "4", "8", "16"])
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.legend(list(handles.values()), [wrap(k, 28) for k in handles], loc="upper left", bbox_to_anchor=(1.0, 0.98),
               fontsize=8, title="gray * = paper, 16 shots\n(papers' backbone only)", title_fontsize=7)
    fig.suptitle("Few-shot recognition: accuracy vs shots (mean ± std over seeds)", fontsize=10)
    return _save(plt, fig, path)


def base2new_bar_panels(summary):
    """[(World, [(bar label, {"base", "new", "hm"})], datasets)] of the base-to-new bars, one panel per world: a
    published bar stands right beside ours only where the table shows it (comparable_average)."""
    panels = []
    for world in OrderedDict.fromkeys(entry["world"] for entry in summary.values()):
        bars = []
        for entry in summary.values():
            if entry["world"] != world:
                continue
            bars.append((entry["label"], entry["average"]))
            paper = comparable_average(entry)
            if paper is not None:
                bars.append((f"{paper[0]} (paper)", paper[1]))
        datasets = sorted({d for e in summary.values() if e["world"] == world for d in e["datasets"]})
        panels.append((world, bars, datasets))
    return panels


def plot_base2new(summary, path, hm_convention="avg"):
    """Grouped bars of the average base / new / HM per method, one panel per world (base2new_bar_panels); the
    legend outside the bars, long labels wrapped, each title naming the world, backbone and protocol."""
    if not summary:
        return None
    plt = _pyplot()
    panels = base2new_bar_panels(summary)
    label_lines = max(wrap(label, 14).count("\n") + 1 for _, bars, _ in panels for label, _ in bars)
    width = max(6.0, max(1.1 * len(bars) for _, bars, _ in panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, (3.4 + 0.14 * label_lines) * len(panels)),
                             squeeze=False)
    for ax, (world, bars, datasets) in zip(axes[:, 0], panels):
        x = np.arange(len(bars))
        for i, metric in enumerate(("base", "new", "hm")):
            drawn = ax.bar(x + (i - 1) * 0.27, [avg[metric] for _, avg in bars], width=0.27,
                           label=metric.upper() if metric == "hm" else metric.capitalize(), color=f"C{i}")
            for patch, (label, _) in zip(drawn, bars):
                if label.endswith("(paper)"):  # a published bar: hatched, beside the bar of our runs
                    patch.set_hatch("//")
                    patch.set_alpha(0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([wrap(label, 14) for label, _ in bars], fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        over = datasets[0] if len(datasets) == 1 else f"{len(datasets)} datasets"
        ax.set_title(wrap(f"Base-to-new, {world.label}: average over {over} ({hm_convention} HM)", 90), fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def hm_time_points(summary, cells):
    """{World: [(label, average training time per dataset in s, average HM, devices)]} of the methods with cost
    records (a method with nothing to train stands at its 0 s)."""
    costs = {(world, method): c for world, method, _, c in method_costs(cells, "base2new")}
    panels = OrderedDict()
    for entry in summary.values():
        cost = costs.get((entry["world"], (entry["trainer"], entry["cfg"])))
        if cost is not None:
            panels.setdefault(entry["world"], []).append((entry["label"], cost["train_time_s"] or 0.0,
                                                          entry["average"]["hm"], cost["device"]))
    return panels


def plot_hm_vs_time(summary, cells, path):
    """Average HM against the average training time per dataset, one point per method and one panel per world
    (MPL's Figure 2). Methods without cost records are left out."""
    panels = hm_time_points(summary, cells)
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 4.5), squeeze=False)
    for ax, (world, points) in zip(axes[0], panels.items()):
        for i, (label, seconds, hm, _) in enumerate(points, start=1):
            # a number beside the point, the label in the legend outside (long labels never overlap the points)
            ax.scatter([seconds], [hm], s=40, color=f"C{(i - 1) % 10}", marker="os^Dv<>ph*"[(i - 1) // 10 % 10],
                       label=f"{i}: " + wrap(label, 30))
            ax.annotate(str(i), (seconds, hm), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        devices = ", ".join(sorted({p[3] for p in points}))
        ax.set_xlabel(wrap(f"average training time per dataset (s; {devices})", 60))
        ax.set_ylabel("average HM (%)")
        ax.set_title(wrap(f"Base-to-new, {world.label}: HM vs training time", 60), fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        longest = max(p[1] for p in points)
        ax.set_xlim(-0.05 * (longest or 1.0), 1.3 * (longest or 1.0))  # time starts at 0
    return _save(plt, fig, path)


# ----------------------------------------------------------------------------- command line
def write_report(output_root, out_dir=None, hm_convention="avg", echo=print):
    """Collect, print and write the tables and plots; returns {"tables", "summary", "files", "cells"}."""
    if not osp.isdir(output_root):
        raise FileNotFoundError(f"mmpt.results: output folder not found: {output_root}")
    out_dir = out_dir or osp.join(output_root, "results")
    os.makedirs(out_dir, exist_ok=True)
    cells = collect(output_root)
    for _, line, _ in cells.apart:
        echo("WARNING: " + line)
    tables, summary = build_tables(cells, hm_convention)
    tables += cost_tables(cells)
    header = (f"## Results of {output_root}\n\nCells: mean ± std over seeds (std: numpy, ddof 0) and the seed count "
              f"n; one seed: no ±. Tables are per world: published numbers stand beside ours only on their backbone "
              f"({published.BACKBONE}, {published.SHOTS} shots), dataset and protocol; the toy world and random "
              f"backbones never.\n")
    body = "\n".join(t.markdown() for t in tables) if tables else "No finished runs found (no result.json).\n"
    markdown = header + "\n" + body + ("\n" + apart_markdown(cells) if cells.apart else "")
    files = {"markdown": osp.join(out_dir, "results.md"), "csv": osp.join(out_dir, "results.csv")}
    with open(files["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown)
    fields = ["table", "world", "source", "method", "dataset", "shots", "metric", "mean", "std", "n", "seeds"]
    with open(files["csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for table in tables:
            writer.writerows(table.records)
    for name, plot in (("fewshot_curves", lambda p: plot_fewshot(cells, p)),
                       ("base2new_bars", lambda p: plot_base2new(summary, p, hm_convention)),
                       ("hm_vs_train_time", lambda p: plot_hm_vs_time(summary, cells, p))):
        written = plot(osp.join(out_dir, name + ".png"))
        if written:
            files[name] = written
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
