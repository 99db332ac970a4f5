"""The log parser of CoOp's parse_test_res.py: the values printed after `Finish training` (or `=> result`).

`parse_test_res.py` at the repository root is the CoOp-compatible command on top of this module. The tooling
(scripts, sweep, results) reads a run's result record (mmpt.experiments.record) instead; the logs keep their
format for researchers' own parsers.

Each run folder holds log.txt; a run that was resumed also holds log.txt-<timestamp>: all of them are read in
order of modification time and the last value found counts. The value read is `* <keyword>: X%` after the line
`Finish training` (or after `=> result` with --test-log).

Only runs of one config are averaged: a run folder whose recorded config.yaml differs from the others' (less
the seed and the keys that cannot change results) is kept apart with a WARNING line naming the differing keys.
"""
import argparse
import glob
import os
import os.path as osp
import re
from collections import OrderedDict, defaultdict

import numpy as np

from mmpt.experiments import config_groups

END_SIGNAL_TRAIN = "Finish training"
END_SIGNAL_TEST = "=> result"


def compute_ci95(res):
    """Half-width of the 95% confidence interval (normal approximation, as CoOp)."""
    return 1.96 * np.std(res) / np.sqrt(len(res))


def metric_regex(keyword):
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def sub_folders(directory):
    """Non-hidden sub-folders of `directory`, sorted (one per run, or one per experiment with --multi-exp)."""
    return [osp.join(directory, d) for d in sorted(os.listdir(directory))
            if not d.startswith(".") and osp.isdir(osp.join(directory, d))]


def run_logs(run_dir):
    """log.txt and log.txt-<timestamp> files of one run, oldest first."""
    files = [f for f in glob.glob(osp.join(run_dir, "log.txt*")) if osp.isfile(f)]
    return sorted(files, key=lambda f: (os.path.getmtime(f), f))


def parse_log(fpath, metrics, end_signal):
    """{metric name: last value found after end_signal} for one log file."""
    output = OrderedDict()
    good_to_go = False
    with open(fpath, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line == end_signal:
                good_to_go = True
            if not good_to_go:
                continue
            for metric in metrics:
                match = metric["regex"].search(line)
                if match:
                    output[metric["name"]] = float(match.group(1))
    return output


def parse_run(run_dir, metrics, end_signal):
    """The values of one run folder (the latest log that holds them wins)."""
    output = OrderedDict()
    for fpath in run_logs(run_dir):
        found = parse_log(fpath, metrics, end_signal)
        if found:
            output = OrderedDict(file=fpath, **found)
    return output


def parse_function(*metrics, directory="", args=None, end_signal=None):
    """Print each run's values and the summary; return {metric: mean} (CoOp's function).

    `args` needs `ci95` (bool); `end_signal` defaults from `args.test_log`.
    """
    ci95 = bool(getattr(args, "ci95", False))
    if end_signal is None:
        end_signal = END_SIGNAL_TEST if getattr(args, "test_log", False) else END_SIGNAL_TRAIN
    print(f"Parsing files in {directory}")
    found, skipped = OrderedDict(), []
    for run_dir in sub_folders(directory):
        output = parse_run(run_dir, metrics, end_signal)
        if output:
            found[run_dir] = output
        else:
            skipped.append(osp.basename(run_dir))
    if not found:
        raise ValueError(f"No '{metrics[0]['name']}' result after '{end_signal}' in any log of {directory}"
                         f"{_other_signal_hint(directory, metrics, end_signal)}")
    outputs = [found[run_dir] for run_dir in one_config_runs(directory, list(found), echo=print)]
    metrics_results = defaultdict(list)
    for output in outputs:
        msg = ""
        for key, value in output.items():
            msg += f"{key}: {value:.2f}%. " if isinstance(value, float) else f"{key}: {value}. "
            if key != "file":
                metrics_results[key].append(value)
        print(msg)
    if skipped:
        print(f"Note: no result found in {skipped} (unfinished runs?); they are left out")
    output_results = OrderedDict()
    print("===")
    print(f"Summary of directory: {directory}")
    for key, values in metrics_results.items():
        avg = np.mean(values)
        spread = compute_ci95(values) if ci95 else np.std(values)
        print(f"* {key}: {avg:.2f}% +- {spread:.2f}%")
        output_results[key] = avg
    print("===")
    return output_results


def one_config_runs(directory, run_dirs, echo=print):
    """The run folders of the main config among `run_dirs` (mmpt.experiments.config_groups: the recorded
    config.yaml less the seed and the keys that cannot change results); a WARNING line through `echo` for each
    other config, naming its runs and the differing keys (their values are left out of the summary)."""
    groups = config_groups.group_runs(run_dirs)
    for other in groups[1:]:
        echo("WARNING: " + config_groups.describe_apart(directory, groups[0], other))
    return groups[0].runs if groups else []


def _other_signal_hint(directory, metrics, end_signal):
    """'; ... add --test-log' when the logs hold results after the other end line (--eval-only logs, e.g. the
    base2new test_new folders, read without --test-log), else ''."""
    other = END_SIGNAL_TRAIN if end_signal == END_SIGNAL_TEST else END_SIGNAL_TEST
    if not any(parse_run(run_dir, metrics, other) for run_dir in sub_folders(directory)):
        return ""
    if other == END_SIGNAL_TEST:
        return f" (its logs are of --eval-only runs, which end with '{other}': add --test-log)"
    return f" (its logs are of training runs, which end with '{other}': drop --test-log)"


def collect_results(directory, keyword="accuracy", test_log=False):
    """Parse the run folders of `directory` without printing.

    Returns {"per_run": {run folder name: value}, "mean", "std", "ci95", "n", "apart", "warnings"}; runs without
    a result are left out (per_run may be empty, then the statistics are nan), and so are runs of another config
    than the main one (in "apart", with a line naming the differing keys in "warnings").
    """
    metrics = [{"name": keyword, "regex": metric_regex(keyword)}]
    end_signal = END_SIGNAL_TEST if test_log else END_SIGNAL_TRAIN
    found = OrderedDict()
    for run_dir in sub_folders(directory):
        output = parse_run(run_dir, metrics, end_signal)
        if keyword in output:
            found[run_dir] = output[keyword]
    warnings = []
    kept = one_config_runs(directory, list(found), echo=warnings.append)
    per_run = OrderedDict((osp.basename(d), found[d]) for d in kept)
    apart = OrderedDict((osp.basename(d), v) for d, v in found.items() if d not in kept)
    values = list(per_run.values())
    nan = float("nan")
    return {
        "per_run": per_run,
        "mean": float(np.mean(values)) if values else nan,
        "std": float(np.std(values)) if values else nan,
        "ci95": float(compute_ci95(values)) if values else nan,
        "n": len(values),
        "apart": apart,  # runs of another config than those of per_run (not in the statistics)
        "warnings": warnings,  # one line per config kept apart, naming the differing keys
    }


def main(args, end_signal):
    metric = {"name": args.keyword, "regex": metric_regex(args.keyword)}
    if args.multi_exp:
        final_results = defaultdict(list)
        without = []  # experiment folders with no result at all: listed, and the others still averaged
        for directory in sub_folders(args.directory):
            try:
                results = parse_function(metric, directory=directory, args=args, end_signal=end_signal)
            except ValueError as error:
                print(f"Note: {error}; left out")
                without.append(osp.basename(directory))
                continue
            for key, value in results.items():
                final_results[key].append(value)
        if not final_results:
            raise ValueError(f"no experiment folder of {args.directory} holds a result (without: {without})")
        if without:
            print(f"Note: {len(without)} experiment folder(s) without results, left out: {', '.join(without)}")
        print("Average performance")
        for key, values in final_results.items():
            print(f"* {key}: {np.mean(values):.2f}%")
        return final_results
    return parse_function(metric, directory=args.directory, args=args, end_signal=end_signal)


def get_parser():
    parser = argparse.ArgumentParser(description="Average the results of the run folders in a directory")
    parser.add_argument("directory", type=str, help="folder holding one folder per run (seed)")
    parser.add_argument("--ci95", action="store_true", help="report the 95%% confidence interval, not the std")
    parser.add_argument("--test-log", action="store_true", help="the logs are from --eval-only runs")
    parser.add_argument("--multi-exp", action="store_true", help="average over the sub-folders too")
    parser.add_argument("--keyword", default="accuracy", type=str, help="the metric to read (`* KEYWORD: X%%`)")
    return parser


def cli(argv=None, prog="parse_test_res.py"):
    """The command line: one `<prog>: error: ...` line for a missing folder or a folder without results."""
    args = get_parser().parse_args(argv)
    if not osp.isdir(args.directory):
        raise SystemExit(f"{prog}: error: not a directory: {args.directory}")
    try:
        main(args, END_SIGNAL_TEST if args.test_log else END_SIGNAL_TRAIN)
    except ValueError as e:
        raise SystemExit(f"{prog}: error: {e}")
