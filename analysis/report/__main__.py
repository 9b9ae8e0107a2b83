"""`python -m analysis.report [options]` is `lnscope report [options]` (one parser, in analysis.cli)."""

import sys

from analysis.cli import main

if __name__ == "__main__":
    # prepare=True: mimalloc preloaded, the persistent compilation cache on, jobs on a pool of processes
    sys.exit(main(["report", *sys.argv[1:]], prepare=True))
