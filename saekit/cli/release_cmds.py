"""Commands of this group are added by their owner module (see saekit.cli.app)."""
