"""The command line's one-line errors and the exit codes every device command shares."""

from __future__ import annotations

import signal

import click

__all__ = ["EXIT_BAD_ARGUMENTS", "EXIT_SIGINT", "EXIT_SIGTERM", "BadArguments", "exit_code_of_signal"]

EXIT_BAD_ARGUMENTS = 2
#: Stopped by a signal: 128 + the signal number, as a shell reports a process a signal ended.
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


def exit_code_of_signal(signum: int) -> int:
    return 128 + signum


class BadArguments(click.ClickException):
    """A usage error printed as one line (``Error: ...``), exit code 2."""

    exit_code = EXIT_BAD_ARGUMENTS
