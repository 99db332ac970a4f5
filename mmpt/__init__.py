"""Multi-modal prompt tuning of CLIP: the library (backbones, prompted encoders, the trainer base).

Tooling lives in sub-packages: `mmpt.data` (dataset preparation, generated datasets) and `mmpt.experiments`
(output layout, sweep runner, results, demo). `python -m mmpt.sweep | results | demo | data_prep` are kept as
the stable commands.
"""
