"""Everything that speaks containerd: topics, hand-written protos, the read-only client."""
