"""`ace-jax` command line: dispatches to one module per subcommand in ace_jax.commands."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under ace_jax.commands, one-line help). Modules are imported lazily so that
# `ace-jax tasks list` does not pay for importing JAX.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the CPU demo pipeline on a tiny model"),
    "train": ("train", "run AceGRPO training from an experiment config"),
    "export": ("export", "export a run's params to Hugging Face format"),
    "import": ("import_hf", "start a run from Hugging Face weights"),
    "plan": ("plan", "compile the update step for a mesh and report memory per device"),
    "serve": ("serve", "serve the embedded engine over SGLang's HTTP API"),
    "tasks": ("tasks", "list, prepare or import MLE tasks"),
    "exec": ("exec_script", "run one script against one task in a sandbox"),
    "eval": ("eval", "evaluate a policy on a task set"),
    "report": ("report", "summarize a run directory"),
    "ablate": ("ablate", "compare curricula (arms x seeds) on a fixed evaluation"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(f"ace_jax.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"ace_jax.commands.{module_name}":
            return None
        raise


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ace-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        # Only the chosen command's module is imported to add its arguments.
        if name == selected:
            module = _load(name)
            if module is not None:
                module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from ace_jax.train.hosts import maybe_initialize_from_env
    maybe_initialize_from_env()  # several processes on one machine (or exported by a launcher)
    module = _load(args.command)
    if module is None:
        print(f"ace-jax {args.command}: not available in this version", file=sys.stderr)
        return 2
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
