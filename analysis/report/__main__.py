"""`python -m analysis.report [options]` is `lnscope report [options]` (one parser, in analysis.cli)."""

import sys

from analysis.cli import main, prepare_process

if __name__ == "__main__":  # not in the worker processes that import this module (multiprocessing's spawn)
    prepare_process()  # once, before any work: mimalloc preloaded, the persistent compilation cache on
    sys.exit(main(["report", *sys.argv[1:]]))
