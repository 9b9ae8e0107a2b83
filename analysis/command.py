"""How a `lnscope` program runs a parsed command: the process set up first, bad input as a message.

Shared by the `lnscope` command (analysis.cli) and `python -m analysis.report` (analysis.report.cli),
so both set up the process and report errors alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from analysis.allocator import ensure_preloaded, preload_before_imports
from analysis.runtime import WORKERS_VAR, check_environment, configure_compilation_cache

# lnscope's programs import this module before JAX (it is the CLI's first import): re-executing here,
# with mimalloc preloaded, saves the re-executed program a second import of everything.
preload_before_imports()


def prepare_process() -> None:
    """What a program run of lnscope sets up before any work: mimalloc preloaded (a one-time re-exec,
    analysis.allocator) and JAX's persistent compilation cache (analysis.runtime)."""
    ensure_preloaded()
    configure_compilation_cache()
    os.environ.setdefault(WORKERS_VAR, "auto")  # a study's jobs on one process per core (analysis.runtime)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, *, prepare: bool | None = None) -> int:
    """Parse `argv` with `parser` and run the chosen subcommand's `func`; `argv=None` means run as a
    program (sys.argv, and `prepare_process`, which `prepare=True` asks for with an explicit argv)."""
    try:
        if argv is None or prepare:
            prepare_process()
        args = parser.parse_args(argv)
        check_environment()
        return args.func(args)
    except ValueError as err:  # bad input: a clear message, no traceback
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C: stored results stay (every file is written whole), workers are ended
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped early (`lnscope check --list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as err:  # disk full, read-only store, ...: what, where, what to do (analysis.io)
        from analysis.io import describe_os_error  # imports JAX: not before it is needed

        print(f"{parser.prog}: error: {describe_os_error(err)}", file=sys.stderr, flush=True)
        if argv is None:  # a program ending: what a failed writer's threads report on the way out repeats this line
            logging.disable(logging.CRITICAL)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        return 1
