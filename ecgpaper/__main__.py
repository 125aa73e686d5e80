"""``python -m ecgpaper``: see :mod:`ecgpaper.cli`."""
import sys

from .cli import main

sys.exit(main())
