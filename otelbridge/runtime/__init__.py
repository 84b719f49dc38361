"""Runtime-internal phases: where the time inside ``shim.launch`` and ``task.start`` goes.

* ``recorder.c``: the runtime-side recorder, a runc wrapper installed as the shim's runc
  binary; it appends the moments containerd's events do not show (runc create and runc
  start invoked and exited, whether the shim was new) to a spool directory;
* :mod:`~otelbridge.runtime.install`: compiles it for a spool and prints the containerd
  (CRI) or ``ctr run`` configuration that installs it (``otelbridge hook``);
* :mod:`~otelbridge.runtime.spool`: the bridge's side of the spool: taken per startup at
  emit time, bounded and cleaned by a janitor thread;
* :mod:`~otelbridge.runtime.phases`: the moments of a startup -> child spans of its
  ``shim.launch`` and ``task.start`` (the emitter's ``on_spans`` hook).

docs/runtime.md describes the whole, and what each way of installing costs.
"""

from otelbridge.runtime.phases import RuntimePhases, build_runtime_spans
from otelbridge.runtime.spool import Moment, Spool, SpoolJanitor

__all__ = ["Moment", "RuntimePhases", "Spool", "SpoolJanitor", "build_runtime_spans"]
