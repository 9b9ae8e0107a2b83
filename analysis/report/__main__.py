"""`python -m analysis.report [options]` is `lnscope report [options]` (one parser, in analysis.cli)."""

import sys

from analysis.allocator import ensure_preloaded
from analysis.cli import main

ensure_preloaded()  # once, before any work: mimalloc for XLA's per-call scratch buffers

sys.exit(main(["report", *sys.argv[1:]]))
