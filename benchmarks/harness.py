"""Measurement helpers shared by the benchmark scripts: timing, peak memory, machine description, tables.

Timing: every configuration is run in turn inside each repeat (interleaved), so a load spike from another
process hits all configurations alike; the figure is the median over repeats, after warm-up.

Peak memory:
- CUDA: `torch.cuda.max_memory_allocated()` during one step minus the memory allocated before it (the
  step's activations, gradients and temporaries; the model itself is excluded).
- CPU: growth of the process' peak resident set (VmHWM, reset through /proc/self/clear_refs) during one
  step above its resident set before it. Measured in a child process started with
  MALLOC_MMAP_THRESHOLD_=65536, so glibc returns every freed tensor of >= 64 KiB to the OS at once and the
  resident set follows the live tensors (with glibc's default, freed memory stays resident and a second
  configuration would reuse it unseen). Timing never runs in that child: fresh mmaps cost page faults.
"""
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def add_common_args(parser):
    """The options every benchmark script takes (trainers, classes, backbone, device, repeats, ...)."""
    parser.add_argument("--trainers", nargs="+", default=["MuDPT"])
    parser.add_argument("--config", default=None, help="config file (name under configs/trainers/<T>/ or a path); "
                        "default: each method's declared few-shot config (benchmarks/models.py)")
    parser.add_argument("--classes", nargs="+", type=int, default=[100])
    parser.add_argument("--backbone", default="random-ViT-B/16",
                        help="MODEL.BACKBONE.NAME, e.g. random-ViT-L/14, random-open_clip:ViT-L-14, open_clip:ViT-B-16/laion2b_s34b_b88k")
    parser.add_argument("--opts", nargs="+", default=[], help="config overrides KEY VALUE ... (as train.py's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 keeps "
                        "the CPU-time column free of thread spin-waiting on a machine shared with other work")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default=None, help="append one JSON record per measured row to this file "
                        "(benchmarks/cuda_table.py turns them into README's table)")
    return parser


def append_records(path, records):
    """Append `records` (dicts) to the JSON-lines file `path` (nothing when path is None)."""
    if not path:
        return
    with open(path, "a") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def device_name(device):
    return torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps, repeats, warmup, device, log=print):
    """{name: step()} -> {name: {"wall": [s per repeat], "cpu": [s per repeat]}}; each repeat runs every step once.

    "cpu" is this process' CPU time (all threads, time.process_time): on a shared machine it counts the work
    done, not the waiting for a core, so its ratios stay fair when other processes load the cores.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: {"wall": [], "cpu": []} for name in steps}
    for repeat in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
        log(f"  repeat {repeat + 1}/{repeats} (load {os.getloadavg()[0]:.1f}): "
            + ", ".join(f"{n} {t['wall'][-1]:.2f}s ({t['cpu'][-1]:.2f} cpu-s)" for n, t in times.items()))
    return times


def median(values):
    return statistics.median(values)


def _proc_status_kib(field):
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


def cpu_peak_rss_growth(fn):
    """Bytes by which the resident set peaks above its level before `fn()` (Linux only)."""
    gc.collect()
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident set
    fn()
    return (_proc_status_kib("VmHWM") - before) * 1024


def cuda_peak_growth(fn):
    """Bytes allocated by CUDA tensors at the peak of `fn()` above what was allocated before it."""
    torch.cuda.synchronize()
    gc.collect()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def peak_memory(fn, device):
    return cuda_peak_growth(fn) if torch.device(device).type == "cuda" else cpu_peak_rss_growth(fn)


def memory_method(device):
    if torch.device(device).type == "cuda":
        return "torch.cuda.max_memory_allocated during one step, minus memory allocated before it"
    return ("peak RSS growth during one step (VmHWM after clear_refs) in a child process with "
            "MALLOC_MMAP_THRESHOLD_=65536, so freed tensors leave the resident set")


def run_json_child(script, args):
    """Run `python benchmarks/<script> <args>` with the memory-honest malloc settings; parse its last line as JSON."""
    env = dict(os.environ, **MALLOC_ENV)
    command = [sys.executable, os.path.join(REPO_ROOT, "benchmarks", script), *args]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_line(device):
    """One line naming the hardware and software the figures were measured on."""
    if torch.device(device).type == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        model = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                model = re.search(r"model name\s*:\s*(.*)", cpuinfo.read()).group(1)
        except (OSError, AttributeError):
            pass
        hardware = f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    load = ", load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{hardware}; torch {torch.__version__}, python {platform.python_version()}{load}"


def format_table(headers, rows):
    """Plain-text table, columns right-aligned except the first; also valid Markdown."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def mib(n_bytes):
    return f"{n_bytes / 2 ** 20:.0f} MiB"


def imagenet_classnames(n_classes):
    """The first `n_classes` ImageNet class names: CLIP's cleaned names (datasets/classnames/imagenet.txt, the
    ones CoOp trains on), else torchvision's list. Real names matter: the truncated text length is set by the
    longest tokenised class prompt."""
    path = os.path.join(REPO_ROOT, "datasets", "classnames", "imagenet.txt")
    if os.path.isfile(path):
        with open(path) as lines:
            names = [line.rstrip("\n").split("\t")[1] for line in lines if line.strip() and not line.startswith("#")]
    else:
        from torchvision.models._meta import _IMAGENET_CATEGORIES as names
    if not 1 <= n_classes <= len(names):
        raise ValueError(f"--classes {n_classes}: must be between 1 and {len(names)}")
    return list(names[:n_classes])
