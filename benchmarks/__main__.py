"""`python -m benchmarks --json FILE [--smoke] [--no-peer]`: lnscope's headline speed figures."""

import sys

from analysis.allocator import ensure_preloaded

ensure_preloaded()  # the benchmark measures what `lnscope` runs: mimalloc preloaded (re-exec, once)

from benchmarks.suite import main  # noqa: E402  (after the re-exec: imported once)

main(sys.argv[1:])
