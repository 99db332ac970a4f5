"""README's and docs/METHODS.md's method tables are generated from the declarations (mmpt.experiments.method_table)."""
import os
import shutil

import mmpt
import trainers  # noqa: F401  (declares the methods)
from mmpt.experiments import method_table


def test_tables_match_the_declarations():
    stale = method_table.stale_files()
    assert not stale, f"{stale}: run `{method_table.COMMAND}`"


def test_every_declared_method_has_a_row_with_its_declared_counts():
    table = method_table.render(method_table.TABLES[0][2])
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{name}`" for name, _ in method_table.ordered_methods()]
    assert {name for name, _ in method_table.ordered_methods()} == set(mmpt.declared_methods())
    for name, method in mmpt.declared_methods().items():
        row = next(row for row in rows if row.startswith(f"| `{name}` |"))
        assert method.summary and method.summary in row, name
        for config, count in method.parameter_counts.items():
            assert f"{count:,} (`{config}`)" in row
            assert os.path.isfile(method.config_file(config, method_table.REPO_ROOT)), config


def test_write_rewrites_only_between_the_markers(tmp_path):
    for relative, _, _ in method_table.TABLES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{method_table.REPO_ROOT}/{relative}", tmp_path / relative)
    readme = tmp_path / "README.md"
    text = readme.read_text()
    start = text.index("<!-- methods:readme -->")
    broken = text[:start] + text[start:].replace("| `CoOp` |", "| `CoOpOld` |", 1)
    readme.write_text(broken)
    assert method_table.stale_files(root=str(tmp_path)) == ["README.md"]
    assert method_table.stale_files(write=True, root=str(tmp_path)) == ["README.md"]
    assert readme.read_text() == text and method_table.stale_files(root=str(tmp_path)) == []
