"""The method tables of README.md and docs/METHODS.md, generated from the method declarations.

    python -m mmpt.experiments.method_table           # exit 1 and say which file is stale
    python -m mmpt.experiments.method_table --write   # rewrite the tables in place

Each table lies between the lines `<!-- methods:NAME -->` and `<!-- /methods:NAME -->`; one row per declared
method, zero-shot CLIP first, then the others by name: its `summary`, its configs folder (docs only) and its
declared `parameter_counts` (trainable parameters at ViT-B/16 per config). Nothing outside the markers changes.
"""
import argparse
import os.path as osp
import re
import sys

from dassl.utils import atomic_write
from mmpt.experiments.config import import_method_package

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COMMAND = "python -m mmpt.experiments.method_table --write"
# (file, table name, columns)
TABLES = (("README.md", "readme", ("trainer", "what learns", "trainable params (ViT-B/16, per config)")),
          (osp.join("docs", "METHODS.md"), "docs",
           ("trainer", "what learns", "config folder", "trainable params (ViT-B/16, per config)")))


def ordered_methods():
    """[(name, declaration)]: the methods that train nothing first (zero-shot CLIP), then by name."""
    import_method_package()
    from mmpt.methods import declared_methods

    return sorted(declared_methods().items(), key=lambda item: (item[1].trains, item[0].lower()))


def counts_cell(method):
    counts = method.parameter_counts
    return "; ".join(f"{count:,} (`{config}`)" for config, count in counts.items()) or "-"


def render(columns):
    rows = []
    for name, method in ordered_methods():
        cells = {"trainer": f"`{name}`", "what learns": method.summary or "-",
                 "config folder": f"`configs/trainers/{name}/`"}
        rows.append([cells.get(column, None) or counts_cell(method) for column in columns])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def replaced(text, name, table, path):
    pattern = re.compile(rf"(<!-- methods:{name} -->\n).*?(\n<!-- /methods:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no <!-- methods:{name} --> ... <!-- /methods:{name} --> markers")
    return pattern.sub(lambda match: match.group(1) + table + match.group(2), text)


def stale_files(write=False, root=REPO_ROOT):
    """The files whose tables differ from the declarations (rewritten atomically with write=True)."""
    stale = []
    for relative, name, columns in TABLES:
        path = osp.join(root, relative)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        new = replaced(text, name, render(columns), relative)
        if new != text:
            stale.append(relative)
            if write:
                atomic_write(path, lambda f: f.write(new.encode("utf-8")))
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmpt.experiments.method_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stale tables")
    args = parser.parse_args(argv)
    stale = stale_files(write=args.write)
    for path in stale:
        print(f"{path}: {'rewritten' if args.write else f'method table out of date: run `{COMMAND}`'}")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
