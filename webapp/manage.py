#!/usr/bin/env python
"""Django's command-line utility for the ecgpaper web service (paper section 3.4).

Run from anywhere: ``python webapp/manage.py migrate``, ``createsuperuser``,
``drf_create_token <user>`` (see webapp/README.md).
"""
import os
import sys
from pathlib import Path

WEBAPP = Path(__file__).resolve().parent


def main() -> None:
    # the webapp and the checkout it lives in come first, whatever the working directory
    sys.path[:0] = [str(WEBAPP), str(WEBAPP.parent)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecgweb.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
