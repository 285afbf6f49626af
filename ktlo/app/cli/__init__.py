"""The `ktlo` command. Subcommands live in the modules of this package."""

from __future__ import annotations

import gc
import os
import sys

import typer

from ktlo.app.cli.common import console, fail

app = typer.Typer(
    name="ktlo",
    help="Keeping the lights on: operations runbooks as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register() -> None:
    """Every module of this package with a `register(app)` adds its commands."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"ktlo.app.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register()


def main() -> None:
    """Entry point: operator-facing errors are one line and exit 1; bugs say how to get details."""
    try:
        _main()
    finally:
        # The process ends with the command. Its objects stay out of the interpreter's
        # final garbage collections, which walked everything the command had imported:
        # half a second of CPU after a run. Teardown still releases them.
        gc.freeze()


def _main() -> None:
    from ktlo.errors import KtloError

    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except KtloError as exc:
        fail(str(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted", style="yellow")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted", style="yellow")
        sys.exit(130)
    except Exception as exc:  # usage errors and real bugs
        import click

        # typer vendors its own click: its usage errors are TyperException, not click's
        if isinstance(exc, click.exceptions.ClickException | typer.TyperException):
            exc.show()  # type: ignore[union-attr]
            sys.exit(getattr(exc, "exit_code", 2))
        if os.environ.get("KTLO_DEBUG"):
            raise
        from ktlo import secrets

        fail(
            f"internal error: {type(exc).__name__}: {secrets.redact(str(exc))} (set KTLO_DEBUG=1 for a traceback)"
        )
