"""Running the command line in-process for tests: ``run_cli(capsys, *args)`` -> (exit code, stdout, stderr)."""
from __future__ import annotations

from partclipseg.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``partclipseg ARGS`` in this process (arguments as ``str``); argparse's ``SystemExit`` is its code."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
