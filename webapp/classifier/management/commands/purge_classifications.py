"""``manage.py purge_classifications``: delete records (and their files) older than
the retention period (paper section 5.3: patient data is kept no longer than needed).
Run it daily, e.g. from cron or a systemd timer. It also sweeps stored files that no
record names (issue 22, finding 6: a worker killed mid-upload, a failed deletion):
``classifier.files.sweep_orphans``; ``--orphans-only`` does just that."""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from classifier.files import sweep_orphans
from classifier.models import Classification


class Command(BaseCommand):
    help = ("Delete classifications, with their stored image and heat map, older than "
            "ECGWEB_RETENTION_DAYS days (or --days).")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None,
                            help="retention in days (default: ECGWEB_RETENTION_DAYS)")
        parser.add_argument("--dry-run", action="store_true", help="only count what would go")
        parser.add_argument("--orphans-only", action="store_true",
                            help="keep every record; only sweep files that no record names")
        parser.add_argument("--grace-minutes", type=float, default=60,
                            help="leave files younger than this alone (uploads in flight; "
                                 "default %(default)s)")

    def handle(self, *args, days=None, dry_run=False, orphans_only=False, grace_minutes=60,
               **options):
        if not orphans_only:
            self.purge(days, dry_run)
        counts = sweep_orphans(grace_minutes * 60, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        self.stdout.write(f"{verb} {counts['removed']} stored file(s) that no record names "
                          f"({counts['recovered']} renamed for their record, "
                          f"{counts['kept_recent']} younger than {grace_minutes:g} minutes kept)")

    def purge(self, days, dry_run) -> None:
        days = settings.ECGWEB_RETENTION_DAYS if days is None else days
        if not days or days <= 0:
            raise CommandError("No retention period: set ECGWEB_RETENTION_DAYS (e.g. 90) or pass "
                               "--days N (or --orphans-only). Nothing was deleted.")
        cutoff = timezone.now() - dt.timedelta(days=days)
        old = Classification.objects.filter(created__lt=cutoff)
        count = old.count()
        if not dry_run:
            for record in old.iterator():  # one by one: each deletion removes its files
                record.delete()
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {count} classification(s) created before "
                          f"{cutoff:%Y-%m-%d %H:%M} UTC (retention {days:g} days)")
