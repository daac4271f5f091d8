"""`modelpub`: publish catalog entries and look up what is published."""

from __future__ import annotations

import argparse
import sys

from dagster_project.cli import aliases, lookup, maintenance, publishing, serving, trust
from dagster_project.cli.runner import PublishFailed, publish, publish_adapter
from resources.errors import ModelpubError
from resources.settings import Settings

__all__ = ["PublishFailed", "main", "publish", "publish_adapter"]

# a module per group of commands, each adding its parsers with the function that runs them
COMMAND_GROUPS = (publishing, lookup, serving, trust, aliases, maintenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(Settings.from_env(), args)
    except ModelpubError as exc:
        print(f"modelpub: {exc}", file=sys.stderr)
        return 1
