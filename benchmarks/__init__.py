"""Speed / memory / parameter-count benchmarks (run by hand, see README.md); reference.py also serves tests."""
