"""`kubectl habitat restore`: its flags; the Restore is built in plugin/restore_manifest.py."""

from __future__ import annotations

import argparse

from habitat_operator.plugin import completion
from habitat_operator.plugin.flags import add_write_flags, habitat_resource, run_from


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "restore",
        help="write a Restore: from a Backup, a WalArchive or a bucket",
        description=(
            "Write a Restore for you, valid by construction. SOURCE is a Backup (NAME or backup/NAME) or "
            "walarchive/NAME (point in time); --from-bucket restores from a bucket alone. With --dry-run "
            "it prints the YAML (for Git) and creates nothing."
        ),
    )
    parser.add_argument(
        "source", nargs="?", metavar="SOURCE", help="a Backup (NAME or backup/NAME) or walarchive/NAME"
    ).completer = completion.resource_names(
        habitat_resource("backups"), habitat_resource("walarchives"), qualified=True
    )
    parser.add_argument(
        "--to-database",
        required=True,
        metavar="SECRET[/KEY]",
        help="Secret (key, default uri) of the target's libpq URI",
    )
    parser.add_argument(
        "--run",
        dest="backup_run",
        help="for a scheduled Backup: which run (default: its newest Succeeded one)",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--time", help="point in time: recover transactions committed up to this RFC 3339 time")
    when.add_argument("--lsn", help="point in time: recover up to this WAL position, e.g. 16/B374D848")
    when.add_argument("--restore-point", help="point in time: recover up to this named restore point")
    when.add_argument(
        "--latest",
        action="store_true",
        help="everything the archive holds; from a bucket without --archive: the newest verified artifact",
    )
    bucket = parser.add_argument_group("from a bucket alone (disaster recovery)")
    bucket.add_argument(
        "--from-bucket", metavar="BUCKET", help="the S3 bucket, as a Backup's storage.s3 names it"
    )
    bucket.add_argument("--credentials", metavar="SECRET", help="Secret with accessKeyId and secretAccessKey")
    bucket.add_argument("--endpoint", help="URL of an S3-compatible server")
    bucket.add_argument("--region", default="us-east-1")
    bucket.add_argument("--prefix", default="", help="key prefix inside the bucket")
    bucket.add_argument("--path-style", action="store_true", help="address the bucket in the path")
    bucket.add_argument("--key", help="the artifact's key in the bucket")
    bucket.add_argument(
        "--archive", metavar="WALARCHIVE", help="a WalArchive's archive in the bucket (point in time)"
    )
    bucket.add_argument(
        "--source-namespace", metavar="NS", help="namespace whose Backups or WalArchive wrote it"
    )
    bucket.add_argument(
        "--encryption-key", metavar="SECRET[/KEY]", help="Secret (key, default key) of the artifact's key"
    )
    parser.add_argument(
        "--database", help="the database backed up (newest artifact), or to take from a recovered server"
    )
    parser.add_argument(
        "--drill", action="store_true", help="restore into a scratch database, verify, drop it"
    )
    parser.add_argument(
        "--create-database", action="store_true", help="create the target database if missing"
    )
    add_write_flags(parser, "Restore", "<source>-<UTC time>")
    parser.set_defaults(run=run_from("restore_manifest", "write"))
