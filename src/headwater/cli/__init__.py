"""The ``headwater`` command: parse options → Settings → the Python API → render events.

``app`` is the root command and its groups; each module of this package adds its commands to
them (``docs``, ``dlq``, ``signals``, ``stream``, ``serve``, ``config``); ``main`` loads them all
and runs. How a command ends (one line and a documented exit code, never a traceback unless
``--debug``) is ``guard``'s job; its docstring has the table of exit codes.
"""

from __future__ import annotations


def main() -> None:
    import sys

    from headwater.cli.guard import exit_for_uncaught
    from headwater.cli.main import app

    try:
        app()
    except Exception as exc:  # noqa: BLE001 (what escaped a command's guard still gets one line)
        sys.exit(exit_for_uncaught(exc))
