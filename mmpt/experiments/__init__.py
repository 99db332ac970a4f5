"""Experiment tooling around the library: the output layout (`layout`), the sweep runner (`sweep`), results
tables and plots (`results`, with the published numbers in `published`) and the embedded demo (`demo`)."""
