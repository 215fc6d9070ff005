"""``python -m gpu_pitr`` and the ``gpu-pitr`` script: the command line (``gpu_pitr.cli``).

``run`` imports the command line itself, so that a Ctrl-C or SIGTERM while it is
imported (NumPy, a tenth of a second) is the command's one line and exit status, not a
traceback or a silent death.
"""

import signal
import sys

from gpu_pitr.interrupts import Terminated


def _terminated(signum, frame) -> None:
    raise Terminated


def run() -> None:
    # Until the command's own handling takes over (cli.interrupts.handle_signals).
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from gpu_pitr import cli
    except (KeyboardInterrupt, Terminated) as stop:
        name, status = ("SIGINT", 130) if isinstance(stop, KeyboardInterrupt) else (
            "SIGTERM", 143)
        print(f"gpu-pitr: interrupted by {name}", file=sys.stderr)
        sys.exit(status)
    cli.run()


if __name__ == "__main__":
    run()
