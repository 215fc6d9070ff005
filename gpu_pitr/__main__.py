"""``python -m gpu_pitr`` and the ``gpu-pitr`` script: the command line (``gpu_pitr.cli``).

``run`` imports the command line itself, so that a Ctrl-C or SIGTERM while it is
imported (NumPy, a tenth of a second) is the command's one line and exit status, not a
traceback or a silent death. Its handler goes in first, before this package's own
modules are imported (``interrupts`` and ``environment`` take typing and threading):
only the interpreter's start and the script's two lines come before it.
"""

import signal
import sys

_arrived: list[int] = []


def _early(signum, frame) -> None:
    # While ``interrupts`` (``stop_for``, ``Terminated``) is imported: a handler that
    # imported it could get the half-made module. ``run`` says which signal it was.
    _arrived.append(signum)
    raise KeyboardInterrupt


def _stop(signum, frame) -> None:
    _arrived.append(signum)  # seen even where a callback swallows what is raised
    interrupts = sys.modules["gpu_pitr.interrupts"]  # (imported by now)
    if not interrupts.shielded(frame):  # (there: said once the import is over)
        raise interrupts.stop_for(signum)


def error_status(argv: list[str]) -> int:
    """The exit status of an error that is not the data's: 1, but 2 for ``verify``,
    whose 1 says damage was found, and ``diff``, whose 1 says the two differ. (Its
    command is the first word that is not an option: the options before it, -h and
    --version, take no value.)"""
    command = next((a for a in argv if not a.startswith("-")), None)
    return 2 if command in ("verify", "diff") else 1


def run() -> None:
    hook = sys.unraisablehook
    try:  # (a Ctrl-C before the handler is in is Python's KeyboardInterrupt: here too)
        # Until the command's own handling takes over (cli: interrupts.handle_signals).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _early)
        from gpu_pitr import environment
        from gpu_pitr.interrupts import Terminated, announce, signal_of

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stop)
    except BaseException as stop:  # (Terminated: not a name yet)
        if not (_arrived or isinstance(stop, KeyboardInterrupt)):
            raise
        signum = _arrived[0] if _arrived else signal.SIGINT
        print(f"gpu-pitr: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        exec("pass")  # noqa: S102 - interrupts.handled(): the status below, not SIGINT
        sys.exit(128 + signum)  # (interrupts.announce's line)

    def unraisable(info) -> None:
        if not (_arrived and issubclass(info.exc_type, (KeyboardInterrupt, Terminated))):
            hook(info)  # (a stop swallowed by a callback: its one line comes below)

    try:
        sys.unraisablehook = unraisable
        # Before NumPy's import trips over it.
        problem = environment.platform_problem() or environment.problem()
        if problem is not None:
            print(f"gpu-pitr: error: {problem}", file=sys.stderr)
            sys.exit(error_status(sys.argv[1:]))
        from gpu_pitr import cli
    except (KeyboardInterrupt, Terminated) as stop:
        sys.exit(announce(signal_of(stop)))
    finally:
        sys.unraisablehook = hook
    if _arrived:  # raised inside a callback while importing, and swallowed there
        sys.exit(announce(_arrived[0]))
    cli.run()


if __name__ == "__main__":
    run()
