"""``otelbridge demo``: a traced rollout on a private containerd, shown as a waterfall."""
