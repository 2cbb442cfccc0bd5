"""One module per `ace-jax` subcommand; each exposes `add_arguments(parser)` and `run(args) -> int`."""
