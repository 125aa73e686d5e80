"""``manage.py purge_classifications``: delete records (and their files) older than
the retention period (paper section 5.3: patient data is kept no longer than needed).
Run it daily, e.g. from cron or a systemd timer."""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from classifier.models import Classification


class Command(BaseCommand):
    help = ("Delete classifications, with their stored image and heat map, older than "
            "ECGWEB_RETENTION_DAYS days (or --days).")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None,
                            help="retention in days (default: ECGWEB_RETENTION_DAYS)")
        parser.add_argument("--dry-run", action="store_true", help="only count what would go")

    def handle(self, *args, days=None, dry_run=False, **options):
        days = settings.ECGWEB_RETENTION_DAYS if days is None else days
        if not days or days <= 0:
            raise CommandError("No retention period: set ECGWEB_RETENTION_DAYS (e.g. 90) or pass "
                               "--days N. Nothing was deleted.")
        cutoff = timezone.now() - dt.timedelta(days=days)
        old = Classification.objects.filter(created__lt=cutoff)
        count = old.count()
        if not dry_run:
            for record in old.iterator():  # one by one: each deletion removes its files
                record.delete()
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {count} classification(s) created before "
                          f"{cutoff:%Y-%m-%d %H:%M} UTC (retention {days:g} days)")
