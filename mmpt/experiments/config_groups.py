"""Which runs may be aggregated into one number: runs of one config.

A results cell (mmpt.results) and a parse_test_res.py summary average seed folders. They may do so only when the
runs differ in nothing that can change a result: their recorded config.yaml (train.py writes it) must agree on
every key except the seed and the keys that name places or console output (mmpt.run_folder.NON_IDENTITY_KEYS,
the one list of them). Runs of other configs are kept apart, and one line names the keys that differ.

A run folder without config.yaml (written before runs recorded their config) cannot be checked: it joins the
main group, and `unchecked` names it.

This module does not import torch.
"""
from dataclasses import dataclass, field
import os.path as osp

from mmpt import run_folder

# keys that differ between the seed folders of one cell by design
PER_RUN_KEYS = ("SEED",)


def identity_config(run_dir):
    """{dotted key: value} of run_dir's recorded config less the keys that cannot change results, or None."""
    recorded = run_folder.recorded_config(run_dir)
    if recorded is None:
        return None
    ignored = set(run_folder.NON_IDENTITY_KEYS) | set(PER_RUN_KEYS)
    return {key: value for key, value in recorded.items() if key not in ignored}


def differences(config, other):
    """[(key, value in config, value in other)] of two identity configs (sorted; keys on one side only are not
    compared, as run_folder.config_differences)."""
    ignored = set(PER_RUN_KEYS)
    return [d for d in run_folder.config_differences(config, other) if d[0] not in ignored]


@dataclass
class ConfigGroup:
    """Run folders (names, in the order given) of one config."""

    config: dict  # the identity config of the group's runs (None: no run of it recorded one)
    runs: list = field(default_factory=list)
    unchecked: list = field(default_factory=list)  # runs without config.yaml, added to the main group


def group_runs(run_dirs):
    """[ConfigGroup] of `run_dirs`: the main group first (the most runs; a tie: the group of the earliest run),
    then the others in order of their first run."""
    groups = []
    unchecked = []
    for run_dir in run_dirs:
        config = identity_config(run_dir)
        if config is None:
            unchecked.append(run_dir)
            continue
        for group in groups:
            if not differences(group.config, config):
                group.runs.append(run_dir)
                break
        else:
            groups.append(ConfigGroup(config, [run_dir]))
    if not groups:
        return [ConfigGroup(None, list(unchecked), list(unchecked))] if unchecked else []
    groups.sort(key=lambda g: -len(g.runs))  # stable: a tie keeps the earlier group first
    main = groups[0]
    main.unchecked = list(unchecked)
    main.runs = [d for d in run_dirs if d in main.runs or d in unchecked]
    return groups


def describe_apart(directory, main, other):
    """One line: the runs of `other` are not averaged with those of `main`, and the keys that differ."""
    names = ", ".join(osp.basename(d) for d in other.runs)
    main_names = ", ".join(osp.basename(d) for d in main.runs)
    return (f"{directory}: {names} ran another config than {main_names} (config.yaml differs: "
            f"{run_folder.describe_differences(differences(main.config, other.config))}); kept apart, not averaged")
