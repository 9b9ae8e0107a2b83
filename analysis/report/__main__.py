"""`python -m analysis.report [options]` is `lnscope report [options]` (the same options: analysis.report.cli)."""

import sys

from analysis.report.cli import main

if __name__ == "__main__":
    # prepare=True: mimalloc preloaded, the persistent compilation cache on, jobs on a pool of processes
    sys.exit(main(sys.argv[1:], prepare=True))
