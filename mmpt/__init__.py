"""Multi-modal prompt tuning of CLIP: the shared library (backbones, prompted encoders, trainer base, tools)."""
