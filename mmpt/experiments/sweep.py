"""Run a grid of experiments: `python -m mmpt.sweep`.

    python -m mmpt.sweep --trainers MuDPT CoOp --protocol base2new --datasets all --seeds 1 2 3 --data $DATA
    python -m mmpt.sweep --trainers MuDPT --protocol fewshot --shots 1 2 4 8 16 --gpus 0,1 --data $DATA
    python -m mmpt.sweep --trainers MuDPT --protocol xd dg --launcher slurm --partition gpu --time 240 --data $DATA
    python -m mmpt.sweep ... --gpus 0,1,2,3 --gpus-per-run 2        # each run on 2 GPUs (torchrun), 2 runs at a time
    python -m mmpt.sweep ... --launcher slurm --gpus-per-run 4 --nodes 2   # each run on 2 nodes x 4 GPUs
    python -m mmpt.sweep ... --dry-run          # list the jobs (and which are finished) without running anything

Every job is one train.py command built by mmpt.experiments.layout (the same commands and folders as scripts/<trainer>/;
--opts give the runs folders of their own). Finished runs (their folder holds a finished result record, result.json,
and their config.yaml equals the requested config) are skipped, so re-running a sweep resumes it: killed or
failed jobs run again (a killed training resumes from its last checkpoint). Jobs run in parallel, one per GPU
(--gpus, through CUDA_VISIBLE_DEVICES; with --gpus-per-run N, one job per group of N GPUs, started with torchrun)
or N at a time (--jobs); each writes its stdout to `stdout.log` in its run folder. On SLURM a job of
--gpus-per-run N GPUs runs as N tasks per node on --nodes nodes, one train.py process per GPU. A failing job is reported with its log and does not stop the others; jobs that depend on it (the
evaluations of a model that failed to train) fail with "dependency failed". `<output>/sweep_manifest.json`
records each job's command, status (pending / running / done / failed / skipped), return code and log.
"""
import argparse
import json
import os
import re
import os.path as osp
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from datetime import datetime

from dassl.errors import ConfigError
from dassl.utils import atomic_write
from dassl.utils.registry import closest_name_hint
from mmpt import run_folder
from mmpt.experiments import layout

MANIFEST_NAME = "sweep_manifest.json"
SWEEP_LOCK_FILE = ".sweep.lock"  # held by the sweep running into an output root (a second one stops at once)
JOB_LOG_NAME = "stdout.log"
PROTOCOLS = ("base2new", "fewshot", "xd", "dg")


# ----------------------------------------------------------------------------- grid
def resolve_trainer(name):
    """Registry name from a registry or script-folder name, case-insensitive (mudpt -> MuDPT)."""
    declared = layout.declared_methods()
    names = {n.lower(): n for n in declared}
    names.update(layout.trainer_folders())
    try:
        return names[name.lower()]
    except KeyError:
        raise ValueError(f"unknown trainer '{name}' (--trainers).{closest_name_hint(name, declared)} "
                         f"Known: {', '.join(declared)}") from None


def protocol_stages(protocol, trainer, datasets, shots_list):
    """[(stage, dataset, shots)] of one protocol for one trainer, in dependency order."""
    zero_shot = not layout.method(trainer).trains  # evaluation only
    if layout.method(trainer).transductive:  # full training splits (0 shots); its teacher run joins as a dependency
        if protocol == "base2new":
            stages = ["base2new_train_all", "base2new_test_base", "base2new_test_new"]
            return [(stage, d, 0) for d in datasets or layout.DATASETS_11 for stage in stages]
        if protocol == "xd":
            return [("xd_train_target", d, 0) for d in datasets or layout.XD_TARGETS]
        raise ValueError(f"mmpt.sweep: {trainer} runs the base2new and xd protocols only (not {protocol})")
    if protocol == "base2new":
        datasets = datasets or layout.DATASETS_11
        stages = ["base2new_test_base", "base2new_test_new"] if zero_shot else ["base2new_train", "base2new_test_new"]
        return [(stage, d, 16) for d in datasets for stage in stages]
    if protocol == "fewshot":
        datasets = datasets or layout.DATASETS_11
        if zero_shot:  # zero-shot CLIP: the full test set once per dataset (the tables' CLIP row)
            return [("xd_test", d, 16) for d in datasets]
        return [("fewshot", d, k) for d in datasets for k in shots_list]
    if protocol in ("xd", "dg"):
        targets = datasets or (layout.XD_TARGETS if protocol == "xd" else layout.DG_TARGETS)
        source = [("xd_test", layout.SOURCE_DATASET, 16)] if zero_shot else [("xd_train", layout.SOURCE_DATASET, 16)]
        return source + [("xd_test", d, 16) for d in targets if not (zero_shot and d == layout.SOURCE_DATASET)]
    raise ValueError(f"unknown protocol '{protocol}' (known: {', '.join(PROTOCOLS)})")


def expand_grid(trainers, protocols, datasets=None, seeds=(1, 2, 3), shots=(1, 2, 4, 8, 16), cfg=None,
                data_root="", output_root="output", opts=(), python=None, nproc=1):
    """The jobs of a grid, each once, every job after the jobs it depends on; nproc > 1: torchrun commands."""
    python = python or sys.executable
    datasets = None if not datasets or list(datasets) == ["all"] else list(datasets)
    jobs = OrderedDict()
    for trainer in [resolve_trainer(t) for t in trainers]:
        for protocol in protocols:
            for seed in seeds:
                for stage, dataset, k in protocol_stages(protocol, trainer, datasets, shots):
                    job = layout.build_job(stage, trainer, dataset, seed, k, cfg=cfg, data_root=data_root,
                                           output_root=output_root, opts=opts, python=python, nproc=nproc)
                    for prerequisite in job.prerequisites:  # e.g. PromptKD's teacher run, before its student
                        jobs.setdefault(prerequisite.id, prerequisite)
                    jobs.setdefault(job.id, job)
    return list(jobs.values())


# ----------------------------------------------------------------------------- manifest
def now():
    return datetime.now().isoformat(timespec="seconds")


def write_json_atomic(path, data):
    """A reader never sees half a file (temp file + rename, dassl's atomic_write)."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode("utf-8")))


class Manifest:
    """`<output root>/sweep_manifest.json`: {"command", "updated", "jobs": {id: record}}; saved after every change."""

    def __init__(self, output_root, command=""):
        self.path = osp.join(output_root, MANIFEST_NAME)
        self.data = {"command": command, "updated": now(), "jobs": OrderedDict()}
        if osp.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    old = json.load(f)
                old.get("jobs", {}).items()
            except (ValueError, AttributeError) as error:  # cut (an old, non-atomic write) or edited by hand
                raise ConfigError(f"{self.path} does not parse ({type(error).__name__}: {error}); it records the "
                                  f"jobs of earlier sweeps into {output_root}: restore it, or delete it (finished "
                                  f"runs are found again from their folders)") from None
            self.data["jobs"].update(old.get("jobs", {}))  # keep the records of jobs outside this grid
        self.data["command"] = command

    def add(self, job, status="pending"):
        record = self.data["jobs"].get(job.id, {})
        record.update(job.to_dict())
        record.update(command=job.shell(), status=status, log=job_log(job), returncode=None, error=None)
        self.data["jobs"][job.id] = record

    def set(self, job_id, **fields):
        self.data["jobs"][job_id].update(fields)
        self.save()

    def status(self, job_id):
        return self.data["jobs"][job_id]["status"]

    def save(self):
        self.data["updated"] = now()
        write_json_atomic(self.path, self.data)


def job_log(job):
    return osp.join(job.output_dir, JOB_LOG_NAME)


# ----------------------------------------------------------------------------- running
PROGRESS_LINE = re.compile(r"^(epoch \[|\* accuracy|Finish training|Trainable parameters|Loading trainer|"
                           r"Evaluate on|Traceback|\w*Error)")


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl = []  # [libc.prctl] once looked up (or [None] where there is none)


def die_with_parent_hook():
    """A Popen preexec_fn (Linux) under which a job gets SIGTERM when the sweep dies, SIGKILL included, and stops
    as on Ctrl-C (train.py leaves nothing half-written; a rerun resumes it); None where prctl is missing (there a
    restarted sweep waits for a job still running into its folder, LocalRunner). libc is looked up here, in the
    parent: the child of a threaded parent must not import or allocate before exec."""
    if not _prctl:
        try:
            import ctypes

            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None)
        except (OSError, AttributeError):
            _prctl.append(None)
    prctl = _prctl[0]
    if prctl is None:
        return None
    parent = os.getpid()

    def die_with_parent():
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the sweep died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return die_with_parent


def start_job(job, cuda_devices=None, progress=None, extra_env=None):
    """Start the job's command as its own process group, appending its stdout/stderr to its log.

    progress: a callable that receives the job's progress lines (epoch lines, accuracy, errors) as they come.
    """
    os.makedirs(job.output_dir, exist_ok=True)
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = layout.REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(cuda_devices)
    log = open(job_log(job), "a", encoding="utf-8")
    log.write(f"=== {now()} {job.shell()}\n")
    log.flush()
    if progress is None:
        try:
            return subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=layout.REPO_ROOT,
                                    start_new_session=True, preexec_fn=die_with_parent_hook())
        finally:
            log.close()  # the child holds its own descriptor
    proc = subprocess.Popen(job.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=layout.REPO_ROOT, start_new_session=True, text=True, errors="replace",
                            preexec_fn=die_with_parent_hook())

    def copy_lines():  # the log gets every line, the console the progress lines
        with log:
            for line in proc.stdout:
                log.write(line)
                if PROGRESS_LINE.match(line):
                    progress(line.rstrip())

    proc.copier = threading.Thread(target=copy_lines, daemon=True)
    proc.copier.start()
    return proc


def finished_status(job, returncode):
    """done when the command succeeded AND its folder holds its result record (a run that wrote none failed)."""
    if returncode == 0 and layout.is_done(job.output_dir, job.trains):
        return "done", None
    if returncode == 0:
        return "failed", "exit code 0 but no result record (result.json) in its run folder"
    if returncode < 0:
        return "failed", f"killed by signal {-returncode}"
    return "failed", f"exit code {returncode}"


def distributed_task_env(index):
    """In a SLURM job of several tasks (one per GPU): the env:// variables that make the train.py of every task one
    process of the same run (rank = the task's global rank); the port moves with the chain's job index, so that
    consecutive runs never meet an old rendezvous. None in a job of one task."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks == 1:
        return None
    dist_env = submitit.helpers.TorchDistributedEnvironment()
    return {"MASTER_ADDR": dist_env.master_addr, "MASTER_PORT": str(dist_env.master_port + index),
            "RANK": str(dist_env.rank), "WORLD_SIZE": str(dist_env.world_size),
            "LOCAL_RANK": str(dist_env.local_rank), "LOCAL_WORLD_SIZE": str(dist_env.local_world_size)}


def run_chain(job_dicts):
    """Run dependent jobs one after another in this process (one SLURM job per chain; every task of a
    multi-GPU job runs the chain as one rank); returns their results."""
    results = []
    failed = set()
    for index, job in enumerate([layout.Job(**d) for d in job_dicts]):
        if layout.is_done(job.output_dir, job.trains, job.argv):
            results.append({"id": job.id, "status": "skipped", "returncode": None, "error": None})
            continue
        if any(dep in failed for dep in job.depends_on):
            failed.add(job.id)
            results.append({"id": job.id, "status": "failed", "returncode": None, "error": "dependency failed"})
            continue
        returncode = start_job(job, extra_env=distributed_task_env(index)).wait()
        status, error = finished_status(job, returncode)
        if status == "failed":
            failed.add(job.id)
        results.append({"id": job.id, "status": status, "returncode": returncode, "error": error})
    return results


class LocalRunner:
    """Runs jobs as subprocesses, at most one per slot; a slot is a GPU id (CUDA_VISIBLE_DEVICES) or None."""

    def __init__(self, manifest, slots, poll_seconds=0.2, echo=print, progress=False):
        self.manifest, self.slots, self.poll, self.echo = manifest, list(slots), poll_seconds, echo
        self.progress = progress  # echo each job's epoch / accuracy lines

    def run(self, jobs):
        grid = {job.id for job in jobs}
        queue = [job for job in jobs if self.manifest.status(job.id) == "pending"]
        running = {}  # job id -> (job, process, slot)
        free = list(self.slots)
        waiting = set()  # jobs whose folder another live process (a killed sweep's job) runs into

        def dependency_status(job_id):  # a dependency outside this grid counts by its result on disk
            if job_id in grid:
                return self.manifest.status(job_id)
            return "skipped" if layout.is_done(osp.join(osp.dirname(self.manifest.path), job_id), True) else "failed"

        try:
            while queue or running:
                for job_id, (job, proc, slot) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    if hasattr(proc, "copier"):
                        proc.copier.join()  # the log is complete before it is parsed
                    status, error = finished_status(job, proc.returncode)
                    self.manifest.set(job_id, status=status, returncode=proc.returncode, error=error,
                                      finished=now())
                    self.echo(f"[{status}] {job_id}" + (f" ({error}; log: {job_log(job)})" if error else ""))
                    del running[job_id]
                    free.append(slot)
                for job in list(queue):
                    dep_status = [dependency_status(d) for d in job.depends_on]
                    if "failed" in dep_status:
                        queue.remove(job)
                        self.manifest.set(job.id, status="failed", error="dependency failed", finished=now())
                        self.echo(f"[failed] {job.id} (dependency failed: {', '.join(job.depends_on)})")
                    elif free and all(s in ("done", "skipped") for s in dep_status):
                        if self.still_running_elsewhere(job, waiting):
                            continue
                        queue.remove(job)
                        if job.id in waiting and layout.is_done(job.output_dir, job.trains, job.argv):
                            waiting.discard(job.id)
                            self.manifest.set(job.id, status="done", returncode=0, error=None, finished=now())
                            self.echo(f"[done] {job.id} (finished by the job that was running into its folder)")
                            continue
                        waiting.discard(job.id)
                        slot = free.pop(0)
                        progress = None
                        if self.progress:
                            prefix = f"  [{job.trainer} {job.stage} {job.dataset} seed{job.seed}] "
                            progress = (lambda prefix: lambda line: self.echo(prefix + line))(prefix)
                        running[job.id] = (job, start_job(job, slot, progress), slot)
                        attempts = self.manifest.data["jobs"][job.id].get("attempts", 0) + 1
                        self.manifest.set(job.id, status="running", started=now(), gpu=slot, attempts=attempts)
                        self.echo(f"[running] {job.id}" + (f" on GPU {slot}" if slot is not None else "")
                                  + f"  (log: {job_log(job)})")
                if running or waiting:
                    time.sleep(self.poll)
        except BaseException:  # Ctrl-C / SIGTERM: stop the children, record them as failed (re-run resumes them)
            for job_id, (job, proc, _) in running.items():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                self.manifest.set(job_id, status="failed", returncode=proc.returncode, error="interrupted")
            raise

    def still_running_elsewhere(self, job, waiting):
        """True while a live train.py holds the job's folder lock (the job of a sweep killed a moment ago, until
        its parent-death signal stops it, or a copy started by hand): the job waits for it instead of failing
        on the lock, then runs (resuming) or, when that process finished it, counts as done."""
        if not run_folder.folder_in_use(job.output_dir):
            return False
        if job.id not in waiting:
            waiting.add(job.id)
            self.echo(f"[waiting] {job.id} (a running process holds {osp.join(job.output_dir, run_folder.LOCK_FILE)};"
                      f" waiting for it)")
        return True


def run_submitit(manifest, jobs, folder, cluster=None, partition=None, time_min=240, gpus_per_job=1,
                 cpus_per_job=8, wait=True, echo=print, gpus_per_run=1, nodes=1):
    """Submit one submitit job per dependency chain (a training and the evaluations of its model).

    gpus_per_run > 1 or nodes > 1: the job holds gpus_per_run tasks (one GPU each) on each of `nodes` nodes;
    every task runs the chain as one rank of each run (distributed_task_env). Task 0's results are reported."""
    import submitit

    pending = [job for job in jobs if manifest.status(job.id) == "pending"]
    chains, chain_of = OrderedDict(), {}
    for job in pending:  # a job joins the chain of its first pending dependency (teacher -> student -> evaluations)
        root = next((chain_of[d] for d in job.depends_on if d in chain_of), job.id)
        chain_of[job.id] = root
        chains.setdefault(root, []).append(job.to_dict())
    # the workers unpickle run_chain from mmpt.experiments.sweep: make the repository importable there as here
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if layout.REPO_ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([layout.REPO_ROOT] + [p for p in paths if p])
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    if gpus_per_run > 1 or nodes > 1:
        resources = dict(nodes=int(nodes), tasks_per_node=int(gpus_per_run), gpus_per_node=int(gpus_per_run))
    else:
        resources = dict(gpus_per_node=int(gpus_per_job))
    executor.update_parameters(timeout_min=int(time_min), cpus_per_task=int(cpus_per_job), name="mmpt-sweep",
                               slurm_partition=partition, **resources)
    with executor.batch():
        submitted = [(chain, executor.submit(run_chain, chain)) for chain in chains.values()]
    for chain, sub in submitted:
        for d in chain:
            manifest.data["jobs"][d["id"]].update(status="running", submitit_job=str(sub.job_id), started=now())
    manifest.save()
    echo(f"Submitted {len(submitted)} submitit job(s) ({len(pending)} runs) to {executor.cluster}; logs in {folder}")
    if not wait:
        return
    for chain, sub in submitted:
        try:
            results = sub.results()[0]  # task 0 (rank 0); the same as the others
        except Exception as e:  # the whole submitit job failed (timeout, node failure, ...)
            results = [{"id": d["id"], "status": "failed", "returncode": None,
                        "error": f"submitit job {sub.job_id} failed: {str(e).splitlines()[0] if str(e) else e}"}
                       for d in chain]
        for r in results:
            manifest.data["jobs"][r["id"]].update(status=r["status"], returncode=r["returncode"],
                                                  error=r["error"], finished=now())
            log = manifest.data["jobs"][r["id"]]["log"]
            echo(f"[{r['status']}] {r['id']}" + (f" ({r['error']}; log: {log})" if r["error"] else ""))
    manifest.save()


# ----------------------------------------------------------------------------- command line
def prepare(jobs, manifest):
    """Mark finished runs skipped and the others pending; returns (#skipped, #pending)."""
    skipped = 0
    for job in jobs:
        done = layout.is_done(job.output_dir, job.trains, job.argv)
        manifest.add(job, "skipped" if done else "pending")
        skipped += done
    manifest.save()
    return skipped, len(jobs) - skipped


def summarize(manifest, jobs, echo=print):
    counts = OrderedDict((s, 0) for s in ("done", "skipped", "failed", "pending", "running"))
    failed = []
    for job in jobs:
        record = manifest.data["jobs"][job.id]
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        if record["status"] == "failed":
            failed.append(record)
    echo("Sweep: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" (manifest: {manifest.path})")
    for record in failed:
        echo(f"  FAILED {record['id']}: {record['error']}; log: {record['log']}")
    return len(failed)


def gpu_slots(gpus, gpus_per_run=1, nodes=1, launcher="local"):
    """--gpus "0,1,2,3" with --gpus-per-run 2 -> ["0,1", "2,3"]: the CUDA_VISIBLE_DEVICES of each parallel job."""
    if gpus_per_run < 1 or nodes < 1:
        raise ValueError(f"--gpus-per-run {gpus_per_run} / --nodes {nodes}: expected integers >= 1")
    if nodes > 1 and launcher != "slurm":
        raise ValueError(f"--nodes {nodes} needs --launcher slurm (or scripts/ with NNODES and RDZV_ENDPOINT)")
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if len(ids) % gpus_per_run:
        raise ValueError(f"--gpus {gpus} does not split into groups of --gpus-per-run {gpus_per_run}")
    return [",".join(ids[i:i + gpus_per_run]) for i in range(0, len(ids), gpus_per_run)]


def get_parser():
    p = argparse.ArgumentParser(prog="python -m mmpt.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--trainers", nargs="+", required=True, help="e.g. MuDPT CoOp (or script folder names)")
    p.add_argument("--protocol", nargs="+", default=["base2new"], choices=PROTOCOLS)
    p.add_argument("--datasets", nargs="+", default=["all"], help="config names (configs/datasets/*.yaml), "
                   "paths of dataset yamls of one's own, or all (base2new / fewshot: the 11; xd: the 10 targets; "
                   "dg: the 4 ImageNet variants)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(layout.SEEDS))
    p.add_argument("--shots", nargs="+", type=int, default=list(layout.SHOTS), help="few-shot protocol only")
    p.add_argument("--cfg", default=None, help="config name for every trainer (default: each trainer's default)")
    p.add_argument("--data", default=os.environ.get("DATA", ""), help="dataset root (default: $DATA)")
    p.add_argument("--output", default="output", help="output root (default: output)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... passed to every train.py")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--jobs", type=int, default=1, help="parallel jobs without --gpus (default 1)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one job per GPU")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time", type=int, default=240, help="SLURM time limit per job, minutes")
    p.add_argument("--gpus-per-job", type=int, default=1, help="slurm: GPUs requested for a one-process run")
    p.add_argument("--gpus-per-run", type=int, default=1, help="processes (GPUs) per run: > 1 trains each run "
                   "with torch.distributed (local: groups of this many --gpus, torchrun; slurm: tasks per node)")
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes per run (each with --gpus-per-run GPUs)")
    p.add_argument("--cpus-per-job", type=int, default=8)
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and exit (re-running the sweep while its "
                   "jobs are queued submits them again; train.py's output-dir lock stops a copy that overlaps)")
    p.add_argument("--submitit-cluster", default=None, help=argparse.SUPPRESS)  # "local" in the tests
    p.add_argument("--progress", action="store_true", help="local: echo the jobs' epoch and accuracy lines")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    return p


def main(argv=None, echo=print):
    args = get_parser().parse_args(argv)
    if not args.data:  # a dry run too: it prints the commands as they will run
        sys.exit("mmpt.sweep: error: no dataset root: pass --data DIR or set DATA")
    output_root = osp.abspath(args.output)
    try:
        slots = gpu_slots(args.gpus, args.gpus_per_run, args.nodes, args.launcher) or [None] * max(1, args.jobs)
        # locally a run starts through torchrun; on SLURM its tasks are the processes (plain train.py commands)
        nproc = args.gpus_per_run if args.launcher == "local" else 1
        jobs = expand_grid(args.trainers, args.protocol, args.datasets, args.seeds, args.shots, cfg=args.cfg,
                           data_root=args.data, output_root=output_root, opts=args.opts, python=args.python,
                           nproc=nproc)
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"mmpt.sweep: error: {str(e).strip(chr(39))}")
    try:
        if args.dry_run:
            return dry_run(jobs, output_root, echo)
        with run_folder.locked_output_dir(output_root, SWEEP_LOCK_FILE, holder="python -m mmpt.sweep",
                                          option="--output"):
            return run_sweep(args, argv, jobs, output_root, slots, echo)
    except ConfigError as e:  # a corrupt result record or manifest, an output in use: one line naming the file
        sys.exit(f"mmpt.sweep: error: {e}")


def dry_run(jobs, output_root, echo=print):
    """List the jobs, each [done] or [todo], and how many are done / to run / failed in the last sweep."""
    recorded = Manifest(output_root).data["jobs"] if osp.isfile(osp.join(output_root, MANIFEST_NAME)) else {}
    done = failed = 0
    for job in jobs:
        finished = layout.is_done(job.output_dir, job.trains, job.argv)
        done += finished
        failed += not finished and recorded.get(job.id, {}).get("status") == "failed"
        echo(f"[{'done' if finished else 'todo'}] {job.id}\n    {job.shell()}")
    echo(f"{len(jobs)} jobs: {done} done, {len(jobs) - done} to run ({failed} of them failed in the last sweep)")
    return 0


def run_sweep(args, argv, jobs, output_root, slots, echo=print):
    """Run the jobs (under the output root's sweep lock)."""
    manifest = Manifest(output_root, command=shlex.join([sys.executable, "-m", "mmpt.sweep"] + list(
        sys.argv[1:] if argv is None else argv)))
    skipped, pending = prepare(jobs, manifest)
    echo(f"Sweep: {len(jobs)} jobs, {skipped} already finished (skipped), {pending} to run")
    # SIGTERM (e.g. scancel, kill) unwinds like Ctrl-C: the runner stops its children and saves the manifest
    try:
        with run_folder.interrupt_on_stop_signals():
            if args.launcher == "slurm":
                run_submitit(manifest, jobs, osp.join(output_root, "sweep_submitit"), cluster=args.submitit_cluster,
                             partition=args.partition, time_min=args.time, gpus_per_job=args.gpus_per_job,
                             cpus_per_job=args.cpus_per_job, wait=not args.no_wait, echo=echo,
                             gpus_per_run=args.gpus_per_run, nodes=args.nodes)
                if args.no_wait:
                    return 0
            else:
                LocalRunner(manifest, slots, echo=echo, progress=args.progress).run(jobs)
    except KeyboardInterrupt as interrupt:
        name = interrupt.args[0] if interrupt.args else "SIGINT"
        print(f"mmpt.sweep: stopped by {name}; running jobs were stopped and recorded as failed in {manifest.path}: "
              f"run the same command again to resume them", file=sys.stderr)
        return 128 + getattr(signal, name, signal.SIGINT)
    return 1 if summarize(manifest, jobs, echo) else 0


if __name__ == "__main__":
    sys.exit(main())
