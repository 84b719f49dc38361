"""Helpers for testing otelbridge and code built on it.

* :mod:`otelbridge.testing.containerd`: a private, real containerd (own root, state and
  sockets) and ``ctr`` wrappers;
* :mod:`otelbridge.testing.image`: a tiny busybox OCI image built offline;
* :mod:`otelbridge.testing.otlp`: a real OTLP receiver (gRPC and HTTP) on loopback;
* :mod:`otelbridge.testing.kubeapi`: a stand-in Kubernetes API server (pods list/watch)
  for testing the kubernetes readiness source where no API server can run;
* :mod:`otelbridge.testing.events`: builders of containerd envelopes for unit tests;
* :mod:`otelbridge.testing.argo`: an evaluator of Argo Rollouts ``web`` metrics (an
  AnalysisTemplate's url, jsonPath and conditions) against a live processor;
* :mod:`otelbridge.testing.serving`: test HTTP servers on their own thread.
"""
