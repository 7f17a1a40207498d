"""Verifiable-reward tasks: `registry.make_task(cfg)` builds one by name (see `registry.TASKS`)."""
