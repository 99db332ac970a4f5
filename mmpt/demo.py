"""`python -m mmpt.demo`: the stable command; the code lives in `mmpt.experiments.demo`."""
import sys

from mmpt.experiments.demo import main

if __name__ == "__main__":
    sys.exit(main())
