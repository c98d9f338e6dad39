"""hw4's Hydra sweeper plugins (the `hydra_plugins` namespace, where Hydra looks for them)."""
