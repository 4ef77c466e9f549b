"""One module per action, each entered through a run_<action>(ctx, ...) function.
Actions never read argv or the environment: the CLI builds the Context."""
