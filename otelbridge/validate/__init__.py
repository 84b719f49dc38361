"""`otelbridge validate`: the container execution contract, checked before the rollout."""
