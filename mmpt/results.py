"""`python -m mmpt.results`: the stable command; the code lives in `mmpt.experiments.results`."""
import sys

from mmpt.experiments.results import main

if __name__ == "__main__":
    sys.exit(main())
