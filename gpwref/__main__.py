"""``python -m gpwref ...``: the ``gpwref`` command (``gpwref.cli``), every sub-command included."""

import sys

from .cli import main

sys.exit(main())
