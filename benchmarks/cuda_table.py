"""Markdown tables for README from the JSON records of train_step.py / eval_throughput.py (their --json option).

    python benchmarks/cuda_table.py results.jsonl [more.jsonl ...]

Training step: one row per trainer and class count; the step time with every lever on (bf16 autocast on CUDA,
fp32 on CPU), with the shared prefix off, in fp16 + GradScaler and in fp32 where measured; its peak memory; the
step as a multiple of the physical limit (each tower alone). Evaluation: images/s per trainer, class count and
precision (class features cached; CoCoOp: per test batch, shared prefix on / off).
"""
import argparse
import json
import sys

STEP_COLUMNS = [  # (header, configuration name in train_step.py)
    ("step, all on", "all on"),
    ("shared prefix off", "shared prefix off"),
    ("fp16 + GradScaler", "precision fp16 + GradScaler"),
    ("fp32", "precision off (fp32)"),
]
LIMIT_PARTS = ("limit: image tower alone", "limit: text tower alone (prefix shared)")
EVAL_COLUMNS = [  # (header, configuration name in eval_throughput.py)
    ("cached", "cached"),
    ("per batch, shared prefix on", "per batch, shared prefix on"),
    ("per batch, shared prefix off", "per batch, shared prefix off"),
]


def read_records(paths):
    records = []
    for path in paths:
        with open(path) as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise SystemExit(f"{path}:{number}: not a JSON record ({error.msg})") from None
    return records


def markdown(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def milliseconds(seconds):
    return "" if seconds is None else f"{seconds * 1000:.0f} ms"


def gib(n_bytes):
    return "" if n_bytes is None else f"{n_bytes / 2 ** 30:.2f} GiB"


def ordered_keys(records, key):
    seen = []
    for record in records:
        if key(record) not in seen:
            seen.append(key(record))
    return seen


def step_table(records, clock="wall_s"):
    steps = [r for r in records if r["benchmark"] == "train_step"]
    if not steps:
        return ""
    rows = []
    for trainer, classes, batch in ordered_keys(steps, lambda r: (r["trainer"], r["classes"], r["batch"])):
        by_name = {r["configuration"]: r for r in steps
                   if (r["trainer"], r["classes"], r["batch"]) == (trainer, classes, batch)}
        on = by_name.get("all on")
        row = [trainer, classes, batch]
        row += [milliseconds(by_name[name][clock]) if name in by_name else "" for _, name in STEP_COLUMNS]
        off = by_name.get("shared prefix off")
        row.append(f"{off[clock] / on[clock]:.2f}x" if on and off else "")
        row.append(gib(on.get("peak_bytes")) if on else "")
        if on and all(part in by_name for part in LIMIT_PARTS):
            row.append(f"{on[clock] / sum(by_name[part][clock] for part in LIMIT_PARTS):.2f}x")
        else:
            row.append("")
        rows.append(row)
    precision = next((r["precision"] for r in steps if r["configuration"] == "all on"), "")
    headers = (["trainer", "classes", "batch"] + [f"{header} ({precision})" if header == "step, all on" else header
                                                  for header, _ in STEP_COLUMNS]
               + ["shared prefix speed-up", "peak memory (all on)", "step / physical limit"])
    what = "median wall time" if clock == "wall_s" else "median CPU time of the process"
    return f"Training step on {steps[0]['device']} ({what}):\n\n" + markdown(headers, rows)


def eval_table(records):
    evals = [r for r in records if r["benchmark"] == "eval"]
    if not evals:
        return ""
    rows = []
    for trainer, classes, batch, precision in ordered_keys(
            evals, lambda r: (r["trainer"], r["classes"], r["batch"], r["precision"])):
        by_name = {r["configuration"]: r for r in evals
                   if (r["trainer"], r["classes"], r["batch"], r["precision"]) == (trainer, classes, batch, precision)}
        row = [trainer, classes, batch, precision]
        row += [f"{by_name[name]['images_per_s']:.3g}" if name in by_name else "" for _, name in EVAL_COLUMNS]
        rows.append(row)
    headers = ["trainer", "classes", "test batch", "precision"] + [f"images/s, {h}" for h, _ in EVAL_COLUMNS]
    return f"Evaluation on {evals[0]['device']}:\n\n" + markdown(headers, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="JSON-lines files written by --json")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="step times from wall time (GPU) or the process' CPU time (a CPU shared with other work)")
    args = parser.parse_args(argv)
    records = read_records(args.records)
    tables = [table for table in (step_table(records, f"{args.clock}_s"), eval_table(records)) if table]
    if not tables:
        raise SystemExit(f"no train_step / eval records in {', '.join(args.records)}")
    print("\n\n".join(tables))


if __name__ == "__main__":
    sys.exit(main())
