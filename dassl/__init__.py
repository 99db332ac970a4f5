"""A small Dassl-compatible engine: the subset of Dassl.pytorch's API that CoOp-style trainers use.

Written from the contract in docs/ENGINE.md (not copied from upstream) so that it runs on modern torch.
"""
__version__ = "0.1.0"
