"""`python -m analysis.report [options]` is `lnscope report [options]` (one parser, in analysis.cli)."""

import sys

from analysis.cli import main

sys.exit(main(["report", *sys.argv[1:]]))
