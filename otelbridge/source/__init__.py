"""Sources of raw envelopes: the live containerd subscription, recordings to replay."""
