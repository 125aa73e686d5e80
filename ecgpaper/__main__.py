"""``python -m ecgpaper``: see :mod:`ecgpaper.cli`."""
import sys

from ecgpaper.cli import main

sys.exit(main())
