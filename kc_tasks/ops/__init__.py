"""Operating kc_tasks: the `kc-tasks` command, development mode and its stand-in providers, the
RabbitMQ policies."""
