"""The one command that extends the bit-for-bit records (tests/data/*.pt) with the variants they lack.

    PYTHONPATH=$PWD python -m tests.records            # every record: append the missing variants
    PYTHONPATH=$PWD python -m tests.records logits     # only tests/record_logits.py's record
    PYTHONPATH=$PWD python -m tests.records --rewrite  # recompute every entry (only for an intended numerics change)

A record is a module tests/record_<name>.py with RECORD_PATH, `variants()` -> [(variant, trainer, overrides,
resnet)] and `measure(trainer, overrides, resnet)` -> the entry; its test computes the entry with the same
`measure`, so the command records with exactly the test's settings (one thread, the test's backbone and
options). The variants come from the module's list and from the declared methods' `record_variants`: adding a
method means declaring its variants in its module and running this command; the entries already in a file are
never recomputed or touched (a fresh computation on another machine could differ in the last bit of an old
method's entry, which would hide a regression). The file is replaced atomically.

Bits reproduce only on the kind of processor that computed them (MKL and ATen choose kernels by instruction set):
each entry's machine is kept under MACHINES_KEY, and the tests compare bit for bit where it matches this machine,
within float tolerance (and with a warning) elsewhere.
"""
import argparse
import glob
import importlib
import os
import os.path as osp
import platform
import sys
import warnings

import torch

TESTS = osp.dirname(osp.abspath(__file__))
COMMAND = "PYTHONPATH=$PWD python -m tests.records"
MACHINES_KEY = "__machines__"  # {variant: machine()} of the machine that computed each entry


def machine():
    """What decides the kernels and so the last bits: torch's version, its CPU capability and the processor."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"torch": str(torch.__version__), "capability": torch.backends.cpu.get_cpu_capability(), "processor": model}


def equal_as_recorded(record, variant, measured, expected):
    """torch.equal where `variant`'s entry was computed on this kind of machine; elsewhere within 1e-5 of the
    tensor's scale (other kernels move the last bits, and an element's error follows the magnitudes it was
    summed from, not its own: MMRL's logits are 100 x cosines), with a warning saying so."""
    recorded_on = record.get(MACHINES_KEY, {}).get(variant)
    if recorded_on == machine():
        return torch.equal(measured, expected)
    warnings.warn(f"{variant}: recorded on {recorded_on}, this is {machine()}: compared within 1e-5 of the "
                  "tensor's scale, not bit for bit")
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    return torch.allclose(measured, expected, rtol=1e-5, atol=1e-5 * scale)


def record_modules():
    """{record name: module} of every tests/record_<name>.py."""
    names = sorted(osp.basename(p)[len("record_"):-3] for p in glob.glob(osp.join(TESTS, "record_*.py")))
    modules = {name: importlib.import_module(f"tests.record_{name}") for name in names}
    for name, module in modules.items():
        missing = [attr for attr in ("RECORD_PATH", "variants", "measure") if not hasattr(module, attr)]
        if missing:
            raise SystemExit(f"tests.records: tests/record_{name}.py lacks {', '.join(missing)} (see tests/records.py)")
    return modules


def missing_hint(record_name, variant):
    """The one line a test fails with when `variant` has no entry in the record."""
    return f"no entry for '{variant}' in tests/data record '{record_name}': run `{COMMAND} {record_name}`"


def load(path):
    return torch.load(path) if osp.isfile(path) else {}


def save(path, record):
    from dassl.utils import atomic_write

    os.makedirs(osp.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: torch.save(record, f))


def extend(module, rewrite=False, echo=print):
    """Append the entries of `module`'s variants missing from its file (all of them with rewrite); returns the
    names of the variants computed."""
    record = {} if rewrite else load(module.RECORD_PATH)
    computed = []
    for variant, trainer, overrides, resnet in module.variants():
        if variant in record:
            continue
        record[variant] = module.measure(trainer, overrides, resnet)
        record.setdefault(MACHINES_KEY, {})[variant] = machine()
        computed.append(variant)
        echo(f"  + {variant} ({trainer}{', ResNet' if resnet else ''})")
    known = {variant for variant, _, _, _ in module.variants()}
    stale = sorted(k for k in set(record) - known if not k.startswith("__"))  # "__...": a record's own metadata
    if stale:
        echo(f"  note: entries without a variant (kept): {', '.join(stale)}")
    if computed:
        save(module.RECORD_PATH, record)
    return computed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.records", description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="*", help="record names (default: all): " +
                        ", ".join(osp.basename(p)[7:-3] for p in sorted(glob.glob(osp.join(TESTS, "record_*.py")))))
    parser.add_argument("--rewrite", action="store_true", help="recompute every entry (an intended numerics change)")
    args = parser.parse_args(argv)
    import trainers  # noqa: F401  (declares the methods, MMPT_TRAINER_MODULES' included)

    modules = record_modules()
    unknown = sorted(set(args.records) - set(modules))
    if unknown:
        raise SystemExit(f"tests.records: unknown record {', '.join(unknown)} (known: {', '.join(modules)})")
    for name in args.records or list(modules):
        module = modules[name]
        print(f"{name}: {osp.relpath(module.RECORD_PATH)}")
        computed = extend(module, rewrite=args.rewrite)
        print(f"  {len(computed)} entr{'y' if len(computed) == 1 else 'ies'} computed"
              + (", file written" if computed else ", file unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
