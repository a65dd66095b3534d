"""``python -m trioflow`` and the ``trioflow`` command (see docs/cli.md)."""

import sys

from ._cli import main as _cli_main

__all__ = ["main"]


def main() -> None:
    """Entry point of the ``trioflow`` script: run the command line and exit with its status.

    Examples:
        >>> main()  # trioflow run pipeline.py:pipeline
    """
    sys.exit(_cli_main())


if __name__ == "__main__":
    main()
