"""Average the test results of several runs (CoOp's parse_test_res.py interface).

    python parse_test_res.py output/caltech101/CoOp/vit_b16_16shots            # seed1/ seed2/ seed3/ inside
    python parse_test_res.py output/.../eval_dir --test-log                    # logs of --eval-only runs
    python parse_test_res.py output/base2new/train_base/caltech101 --multi-exp # one level more
    python parse_test_res.py DIR --ci95 --keyword macro_f1

Each run folder holds log.txt; a run that was resumed also holds log.txt-<timestamp>: all of them are read in
order of modification time and the last value found counts. The value read is `* <keyword>: X%` after the line
`Finish training` (or after `=> result` with --test-log). Runs whose recorded config.yaml differs from the
others' (beyond the seed and the keys that cannot change results) are not averaged: a WARNING line names them
and the differing keys.

The parser lives in the package (mmpt.experiments.logs); this file is CoOp's command on top of it.
"""
from mmpt.experiments.logs import (  # noqa: F401  (CoOp's module-level API: parse_test_res.collect_results, ...)
    END_SIGNAL_TEST, END_SIGNAL_TRAIN, cli, collect_results, compute_ci95, get_parser, main, metric_regex,
    parse_function, parse_log, parse_run, run_logs, sub_folders,
)

if __name__ == "__main__":
    cli()
