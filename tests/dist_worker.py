"""The worker of the distributed tests: each process of a torchrun launch runs train.py's main on a list of runs.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py PLAN.json

PLAN.json: {"runs": [[train.py arguments], ...], "kill_at": [run index, epoch, batch, rank] or null}.
One launch runs several trainers so that the processes start (and import torch) once. A run that fails with a
user error prints train.py's one line to stderr and the next run starts. `kill_at` SIGKILLs one rank inside
that run's forward_backward (0-based epoch and batch): a crash mid-epoch, after which torchrun stops the others.
"""
import json
import os
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(plan_path):
    import torch

    torch.set_num_threads(1)
    import train
    from dassl.utils import distributed
    from mmpt.prompt_trainer import PromptTrainer

    with open(plan_path) as f:
        plan = json.load(f)
    kill_at = plan.get("kill_at")
    forward_backward = PromptTrainer.forward_backward
    current = {"run": -1}

    def forward_backward_or_die(self, batch):
        if kill_at and [current["run"], self.epoch, self.batch_idx, distributed.get_rank()] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward_backward(self, batch)

    PromptTrainer.forward_backward = forward_backward_or_die
    for index, args in enumerate(plan["runs"]):
        current["run"] = index
        try:
            train.main(train.get_parser().parse_args(args))
        except train.ConfigError as error:  # a user mistake: train.py's one line
            print(f"train.py: error: {error}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
