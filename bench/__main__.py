"""``python -m bench``: run the suite, or ``--check`` the figures of the last run."""

import sys

from .runner import main

sys.exit(main())
