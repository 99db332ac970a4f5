"""`python -m mmpt.sweep`: the stable command; the code lives in `mmpt.experiments.sweep`."""
import sys

from mmpt.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main())
