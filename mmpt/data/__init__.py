"""Dataset tooling: download / verify / lay out the real datasets (`data_prep`) and generate small ones in the
real layouts (`fixtures`, for tests and the demo). The loaders themselves are the repository's `datasets/`."""
