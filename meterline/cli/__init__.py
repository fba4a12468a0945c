"""The `meterline` command: one entry point per role and tool. Thin: parse, call, print. Each
command group registers its own subcommands (dev, usage, roles, billing, checks, data)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from meterline import __version__, forward
from meterline.cli import billing, checks, data, dev, roles, usage
from meterline.cli.common import CONFIG_HELP, load
from meterline.core.config import ConfigError
from meterline.core.errors import MeterlineError


class UsageError(Exception):
    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse's, raising instead of exiting, so that a command given --json gets its usage
    errors as JSON on stdout (exit 2 either way, as argparse's)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.format_usage(), message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _usage_error(exc, argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        if args.command in forward.COMMANDS:
            config = load(args)
            running = forward.running(config) if config.clickhouse.dsn.startswith("chdb://") else None
            if running is not None:
                return forward.forward(running, argv)
        code: int = args.run(args)
        return code
    except UsageError as exc:  # a command's own check of its arguments (`args.parser.error`)
        return _usage_error(exc, argv)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except MeterlineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _usage_error(exc: UsageError, argv: Sequence[str]) -> int:
    if "--json" in argv:
        print(json.dumps({"ok": False, "error": str(exc), "kind": "UsageError"}))
    else:
        print(f"{exc.usage}meterline: error: {exc}", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meterline", description="Usage metering between product and invoice.")
    parser.add_argument("--version", action="version", version=f"meterline {__version__}")
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    commands = parser.add_subparsers(title="commands", dest="command")
    for group in (dev, usage, billing, checks, data):
        group.register(commands)
    roles.register(commands, main)
    _config_after_any_command(parser)
    return parser


def _config_after_any_command(parser: argparse.ArgumentParser) -> None:
    """`meterline reconcile --config F` as well as `meterline --config F reconcile`: every command
    takes it too, its default suppressed so that it never overrides the one given first."""
    for action in parser._actions:  # argparse keeps subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--config" in a.option_strings for a in sub._actions):
                    sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
                _config_after_any_command(sub)
