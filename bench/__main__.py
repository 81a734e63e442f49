"""`python -m bench ...` entry point."""

import os
import sys

from bench.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:
    # The reader went away (`bench ... | head`): no traceback for what is not an error of ours;
    # stdout is pointed at devnull so that the interpreter's final flush cannot fail again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1  # as Python itself does on EPIPE: the output was cut short
raise SystemExit(code)
