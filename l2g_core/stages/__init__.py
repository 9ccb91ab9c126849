"""One module per `l2g` subcommand: `configure(parser)` and `run(args)`."""
