"""``twiml-transcribe users add|remove|list``: the web app's staff accounts (docs/web.md)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from twiml_assets.web.users import UsersError, UserStore


def users_file(args: argparse.Namespace) -> Path:
    """``--file``, else TWIML_WEB_USERS_FILE (the web app's default)."""
    if args.file:
        return Path(args.file).expanduser()
    from twiml_assets.web.settings import WebSettings

    return WebSettings.from_env().users_file


def read_password(from_stdin: bool) -> str:
    """One line from stdin (scripts), or typed twice at a prompt that does not echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise UsersError("the passwords differ")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    store = UserStore(users_file(args))
    if args.users_command == "add":
        user = store.add(
            args.name,
            read_password(args.password_stdin),
            max_upload_mb=args.max_upload_mb,
            uploads_per_hour=args.uploads_per_hour,
            replace=args.replace,
        )
        print(f"{user.name}: saved in {store.path} ({user.limits_text()})")
    elif args.users_command == "remove":
        store.remove(args.name)
        print(f"{args.name.strip().lower()}: removed from {store.path}")
    else:
        users = store.users()
        if not users:
            print(f"no users in {store.path}: add one with `twiml-transcribe users add NAME`")
        for user in users.values():
            print(f"{user.name:24s} {user.limits_text()}")
    return 0
