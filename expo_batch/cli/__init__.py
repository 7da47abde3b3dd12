"""The ``expo-batch`` command line: thin commands over the library.

Each command group lives in its own module here and registers itself on the app; heavy
libraries (torch, transformers, huggingface_hub) are imported inside the command bodies so that
``expo-batch --help`` stays instant. Errors are formatted once, in :func:`main`.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="expo-batch",
    help="Model extrapolation (ExPO) for a registry of SFT/aligned pairs: "
    "theta1 + alpha * (theta1 - theta0), alpha chosen by reward.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group; each defines ``register(app)``.
_COMMAND_MODULES = ("manifest_cmds", "checkpoint_cmds", "sweep_cmds", "run_cmds", "results_cmds")


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"expo_batch.cli.{name}")
        except ModuleNotFoundError as e:  # a command group not built yet
            if e.name != f"expo_batch.cli.{name}":
                raise
            continue
        module.register(app)


_register_all()


def _interrupted() -> None:
    from expo_batch.console import err

    err.print("interrupted: everything finished so far is saved; run again to resume")
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, print ExpoError once without a traceback."""
    from expo_batch.errors import ExpoError

    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of exiting;
        # typer turns Ctrl-C into exit code 130.
        code = app(args=argv, standalone_mode=False)
        if code == 130:
            _interrupted()
    except ExpoError as e:
        from expo_batch.console import err

        err.print(f"[bold red]error:[/bold red] {e.message}", markup=True, highlight=False)
        if e.hint:
            err.print(f"  [cyan]hint:[/cyan] {e.hint}", markup=True, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except Exception as e:
        # Usage errors come from click (typer may vendor its own copy: match by class name).
        names = {c.__name__ for c in type(e).__mro__}
        if "Abort" in names:  # Ctrl-C or end of input at a prompt
            _interrupted()
        if "ClickException" in names:
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        raise
    sys.exit(code if isinstance(code, int) else 0)
