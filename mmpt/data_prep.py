"""`python -m mmpt.data_prep`: the stable command; the code lives in `mmpt.data.data_prep`."""
import sys

from mmpt.data.data_prep import main

if __name__ == "__main__":
    sys.exit(main())
