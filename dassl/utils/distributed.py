"""torch.distributed for the engine: one process per GPU (torchrun, or SLURM tasks), and every helper a no-op
in a plain single-process run (whose results stay bit-identical).

The semantics (docs/DISTRIBUTED.md):
- Training: every rank reads the same global batch (same sampler, same random state, same augmentations as the
  single-process run) and trains on its contiguous slice of it; the gradients are summed across ranks with the
  weight local count / global count, which gives the gradient of the loss averaged over the global batch. So the
  sequence of steps, the LR schedule and the checkpoints are the single-process run's, within float tolerance,
  for any number of ranks.
- Evaluation: each rank evaluates a contiguous shard of the split; the evaluator's per-image results are gathered
  in dataset order, so every image counts exactly once.
- Rank 0 alone writes (log, checkpoints, few-shot caches, split files); the other ranks wait at a barrier.
"""
import atexit
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from dassl.utils.registry import ConfigError


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def launched_distributed(environ=None):
    """True when a launcher (torchrun, or the sweep's SLURM tasks) has set the env:// variables."""
    environ = os.environ if environ is None else environ
    return all(key in environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(use_cuda=True):
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR / PORT, LOCAL_RANK):
    NCCL with one GPU per process when CUDA is used, gloo otherwise. A no-op without those variables (plain run)
    or when the group already exists (several runs in one process)."""
    if is_distributed() or not launched_distributed():
        return False
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        # LOCAL_RANK indexes the node's GPUs; where the launcher already gave each task its own GPU
        # (CUDA_VISIBLE_DEVICES of one device), the modulo maps every local rank onto it
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(shutdown)
    return True


def shutdown():
    if is_distributed():
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (it writes caches / split files); the others run it once rank 0 is done."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


@contextlib.contextmanager
def quiet():
    """Send stdout to /dev/null for the block (ranks other than 0: the log is rank 0's)."""
    saved = sys.stdout
    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull
        try:
            yield
        finally:
            sys.stdout = saved


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj if is_main_process() else None]
    dist.broadcast_object_list(holder, src=0, device=_object_device())
    return holder[0]


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _object_device():
    # NCCL moves pickled objects through the current GPU; gloo through the CPU
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def sync_random_state():
    """Every rank takes rank 0's random states (python, numpy, torch, CUDA): all ranks then draw the same sampler
    order, augmentations and initial prompts, those of a single-process run."""
    if not is_distributed():
        return
    from .tools import get_random_rng_state, set_random_rng_state

    state = broadcast_object(get_random_rng_state() if is_main_process() else None)
    if not is_main_process():
        set_random_rng_state(state)


@torch.no_grad()
def broadcast_parameters(modules):
    """Rank 0's parameters and buffers in every module, on every rank (a safety net: the initial values already
    agree when the random states do)."""
    if not is_distributed():
        return
    for module in modules:
        if module is None:
            continue
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def slice_bounds(n, rank, world_size):
    """[start, stop) of `rank`'s contiguous part of n items; the first n % world_size ranks get one more."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_global_batch(batch_size, n_items, world_size, key="DATALOADER.TRAIN_X.BATCH_SIZE"):
    """One-line error when some rank would get no image of a training batch."""
    smallest = batch_size if n_items >= batch_size else n_items  # drop_last keeps full batches only
    if world_size > 1 and smallest < world_size:
        what = f"{key}={batch_size}" if smallest == batch_size else f"the training set ({n_items} images)"
        raise ConfigError(f"{what} is smaller than the {world_size} processes: every process needs at least one "
                          f"image of each global batch (use a batch of >= {world_size} images or fewer processes)")


def local_batch(batch):
    """(this rank's slice of the global batch dict, its share n_local / n_global of the global batch)."""
    world_size = get_world_size()
    if world_size == 1:
        return batch, 1.0
    n = len(batch["label"])
    check_global_batch(n, n, world_size)
    start, stop = slice_bounds(n, get_rank(), world_size)
    return _slice(batch, start, stop), (stop - start) / n


def _slice(value, start, stop):
    if isinstance(value, dict):
        return {key: _slice(item, start, stop) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and value and all(torch.is_tensor(item) for item in value):
        return type(value)(item[start:stop] for item in value)  # K_TRANSFORMS views: each one a [B, ...] tensor
    return value[start:stop]


def all_reduce_gradients(modules, weight):
    """grad <- sum over ranks of weight_r * grad_r for every parameter of `modules` that has a gradient (one
    coalesced all-reduce per device and dtype). With weight_r = n_r / n and each rank's loss a mean over its n_r
    images, the result is the gradient of the mean over the global batch, uneven slices included."""
    if not is_distributed():
        return
    seen, groups = set(), {}
    for module in modules:
        for param in module.parameters() if module is not None else ():
            if param.grad is not None and id(param) not in seen:
                seen.add(id(param))
                groups.setdefault((param.grad.device, param.grad.dtype), []).append(param.grad)
    for grads in groups.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads]).mul_(weight)
        dist.all_reduce(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def average_summary(summary, weight):
    """{name: value} averaged over the global batch (each rank's value weighted by its share)."""
    if not is_distributed() or not summary:
        return summary
    values = torch.tensor([float(v) * weight for v in summary.values()], dtype=torch.float64,
                          device=_object_device())
    dist.all_reduce(values)
    return dict(zip(summary.keys(), values.tolist()))


class ShardSampler(Sampler):
    """Sequential indices of this rank's contiguous shard of a data source (evaluation)."""

    def __init__(self, data_source, rank=None, world_size=None):
        rank = get_rank() if rank is None else rank
        world_size = get_world_size() if world_size is None else world_size
        self.start, self.stop = slice_bounds(len(data_source), rank, world_size)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def evaluate_gathered(evaluator):
    """evaluator.evaluate() over the shards of every rank: rank 0 evaluates (and prints) the per-image results
    gathered in dataset order; every rank returns the same results."""
    if not is_distributed():
        return evaluator.evaluate()
    states = gather_objects(evaluator.shard_state())
    results = None
    if is_main_process():
        evaluator.merge_shards(states)
        results = evaluator.evaluate()
    return broadcast_object(results)
