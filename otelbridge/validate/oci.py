"""OCI bundles: the runtime-spec rules a runtime would refuse, and the contract checks.

The rules are written from the OCI runtime-spec's definitions (``config.md``,
``config-linux.md`` and ``schema/config-schema.json``; docs/validate.md cites each):

* ``ociVersion`` is REQUIRED, a string, in SemVer 2.0.0 format;
* ``root`` is REQUIRED but on Windows, an object whose ``path`` is a string; a bundle
  directory should hold that directory (a warning: containerd mounts it at create time);
* ``process`` is REQUIRED for ``start``: without it a warning. When present: ``cwd`` a
  string and an absolute path; ``args`` an array of strings with at least one entry (not on
  Windows, where ``commandLine`` may replace it); ``env`` an array of ``NAME=value``
  strings (runc refuses an entry without ``=``, with an empty name or a NUL); ``user``'s
  ids unsigned 32-bit integers; no two ``rlimits`` of one ``type``;
* ``mounts``: each a ``destination`` string; a relative one is deprecated on Linux
  (a warning: runc reads it relative to ``/``);
* ``hooks`` (POSIX): each stage an array of hooks, each with an absolute ``path``,
  ``args`` and ``env`` arrays of strings, a ``timeout`` (when set) an integer >= 1;
  ``prestart`` is deprecated; an unknown stage is never run;
* ``annotations``: an object, keys non-empty, values strings;
* ``linux.namespaces``: known types, each once, ``path`` absolute.

A JSON ``null`` counts as absent, as a Go runtime decodes it. Every other wrong JSON type
of a field these rules name is ``oci.field_type``: a Go runtime cannot decode it.

Then the contract (:mod:`otelbridge.validate.contract`) on what the bridge reads from a
non-CRI container: the OCI annotations (trace context, readiness target, limits) and
``process.env`` (``TRACEPARENT``/``TRACESTATE``). A bundle of a CRI container
(``io.kubernetes.cri.container-type`` set) is not required to carry a traceparent: an app
container follows its pod's trace context, and the pod's own lives in its metadata (the
sandbox record, not its config.json): validate the manifest, or the live pod. A
traceparent that is present is still checked.

:func:`validate_spec` never raises on any value ``json.loads`` can return.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeGuard

from otelbridge.containerd.records import CRI_TYPE
from otelbridge.validate.contract import (
    Carrier,
    Rules,
    check_limits,
    check_readiness_target,
    check_trace,
    env_carrier,
    map_carrier,
)
from otelbridge.validate.report import Problem, problem, shown

__all__ = ["HOOK_STAGES", "NAMESPACE_TYPES", "check_spec", "spec_carriers", "validate_spec"]

#: Hook stages of the runtime-spec, in the order a runtime runs them.
HOOK_STAGES: Final = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
#: Namespace types of config-linux.md.
NAMESPACE_TYPES: Final = frozenset(
    {"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"}
)

# SemVer 2.0.0 (semver.org's grammar): numeric identifiers without leading zeros, an
# optional pre-release and build metadata. ASCII digits only: \d would take any digit.
_NUM: Final = r"(?:0|[1-9][0-9]*)"
_PRE_ID: Final = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER: Final = re.compile(
    rf"{_NUM}\.{_NUM}\.{_NUM}(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_UINT32_MAX: Final = 2**32 - 1
_UINT64_MAX: Final = 2**64 - 1
_INT64_MAX: Final = 2**63 - 1


def _type_name(value: object) -> str:
    """The JSON type of a decoded value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_uint(value: object, maximum: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_int64(value: object) -> TypeGuard[int]:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -_INT64_MAX - 1 <= value <= _INT64_MAX
    )


# the JSON types the rules name: what a message calls it, and the test of a decoded value
_KINDS: Final[dict[str, tuple[str, Callable[[object], bool]]]] = {
    "object": ("an object", lambda v: isinstance(v, dict)),
    "array": ("an array", lambda v: isinstance(v, list)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "boolean": ("a boolean", lambda v: isinstance(v, bool)),
    "uint32": ("an unsigned 32-bit integer", lambda v: _is_uint(v, _UINT32_MAX)),
    "uint64": ("an unsigned 64-bit integer", lambda v: _is_uint(v, _UINT64_MAX)),
    "integer": ("a 64-bit integer", _is_int64),
    "strings": ("an array of strings", _strings),
}


class _Checker:
    """Collects the problems of one spec; each method checks one part."""

    def __init__(self, spec: dict[str, Any], bundle_dir: Path | None) -> None:
        self.spec = spec
        self.bundle_dir = bundle_dir
        self.posix = not isinstance(spec.get("windows"), dict)
        self.problems: list[Problem] = []

    def add(self, code: str, path: str, message: str) -> None:
        self.problems.append(problem(code, path, message))

    def expect(self, obj: Mapping[str, Any], key: str, path: str, kind: str) -> Any:
        """``obj[key]`` when it is of ``kind`` (object, array, string, boolean, uint32,
        uint64, integer, strings), else ``None`` (absent or null: silently; of another
        type: ``oci.field_type``)."""
        value = obj.get(key)
        if value is None:
            return None
        wanted, accepts = _KINDS[kind]
        if accepts(value):
            return value
        self.add("oci.field_type", path, f"expected {wanted}, got {_type_name(value)}")
        return None

    def run(self) -> list[Problem]:
        self.version()
        self.root()
        self.process()
        self.mounts()
        self.hooks()
        self.annotations()
        self.linux()
        for key in ("hostname", "domainname"):
            self.expect(self.spec, key, key, "string")
        return self.problems

    def version(self) -> None:
        version = self.spec.get("ociVersion")
        if version is None:
            self.add("oci.version_missing", "ociVersion", "ociVersion is REQUIRED")
        elif not isinstance(version, str):
            self.add("oci.version_type", "ociVersion", f"a string, not {_type_name(version)}")
        elif not _SEMVER.fullmatch(version):
            self.add(
                "oci.version_format", "ociVersion", f"not a SemVer 2.0.0 version: {shown(version)}"
            )

    def root(self) -> None:
        if self.spec.get("root") is None:
            if self.posix:
                self.add("oci.root_missing", "root", "root is REQUIRED on POSIX platforms")
            return
        root = self.expect(self.spec, "root", "root", "object")
        if root is None:
            return
        self.expect(root, "readonly", "root.readonly", "boolean")
        path = root.get("path")
        if not isinstance(path, str) or not path:
            self.add("oci.root_path", "root.path", f"a non-empty string, not {_type_name(path)}")
            return
        if self.bundle_dir is not None and self.posix:
            rootfs = Path(path) if path.startswith("/") else self.bundle_dir / path
            try:
                found = rootfs.is_dir()
            except (OSError, ValueError):  # a NUL in the path, a name too long
                found = False
            if not found:
                self.add(
                    "oci.root_path_not_found",
                    "root.path",
                    f"no directory at {shown(str(rootfs))} (a runtime needs it when it creates "
                    "the container)",
                )

    def process(self) -> None:
        if self.spec.get("process") is None:
            self.add("oci.process_missing", "process", "process is REQUIRED to start it")
            return
        process = self.expect(self.spec, "process", "process", "object")
        if process is None:
            return
        cwd = process.get("cwd")
        if not isinstance(cwd, str):
            self.add("oci.cwd_missing", "process.cwd", f"a string, not {_type_name(cwd)}")
        elif self.posix and not cwd.startswith("/"):
            self.add("oci.cwd_relative", "process.cwd", f"not an absolute path: {shown(cwd)}")
        self.args(process)
        self.env(process)
        for key in ("terminal", "noNewPrivileges"):
            self.expect(process, key, f"process.{key}", "boolean")
        for key in ("apparmorProfile", "selinuxLabel", "commandLine"):
            self.expect(process, key, f"process.{key}", "string")
        self.expect(process, "oomScoreAdj", "process.oomScoreAdj", "integer")
        size = self.expect(process, "consoleSize", "process.consoleSize", "object")
        if size is not None:
            for key in ("height", "width"):
                self.expect(size, key, f"process.consoleSize.{key}", "uint64")
        user = self.expect(process, "user", "process.user", "object")
        if user is not None:
            for key in ("uid", "gid", "umask"):
                self.expect(user, key, f"process.user.{key}", "uint32")
            gids = self.expect(user, "additionalGids", "process.user.additionalGids", "array")
            for i, gid in enumerate(gids or ()):
                if not _is_uint(gid, _UINT32_MAX):
                    self.add(
                        "oci.field_type",
                        f"process.user.additionalGids[{i}]",
                        f"expected an unsigned 32-bit integer, got {_type_name(gid)}",
                    )
        caps = self.expect(process, "capabilities", "process.capabilities", "object")
        for key in ("effective", "bounding", "inheritable", "permitted", "ambient"):
            if caps is not None:
                self.expect(caps, key, f"process.capabilities.{key}", "strings")
        self.rlimits(process)

    def args(self, process: Mapping[str, Any]) -> None:
        args = process.get("args")
        if args is None:
            if self.posix or not isinstance(process.get("commandLine"), str):
                self.add("oci.args_missing", "process.args", "process.args is REQUIRED")
        elif not _strings(args):
            self.add(
                "oci.args_type",
                "process.args",
                f"an array of strings, not {_type_name(args)}"
                + (" holding other values" if isinstance(args, list) else ""),
            )
        elif not args and self.posix:
            self.add("oci.args_empty", "process.args", "at least one entry (the executable)")

    def env(self, process: Mapping[str, Any]) -> None:
        env = process.get("env")
        if env is None:
            return
        if not isinstance(env, list):
            self.add("oci.env_type", "process.env", f"an array of strings, not {_type_name(env)}")
            return
        for i, entry in enumerate(env):
            path = f"process.env[{i}]"
            if not isinstance(entry, str):
                self.add("oci.env_type", path, f"a string, not {_type_name(entry)}")
                continue
            name, sep, _ = entry.partition("=")
            if not sep:
                self.add("oci.env_format", path, f"no '=': {shown(entry, 40)}")
            elif not name:
                self.add("oci.env_format", path, "an empty variable name")
            elif "\x00" in entry:
                self.add("oci.env_format", path, f"a NUL in variable {shown(name)}")

    def rlimits(self, process: Mapping[str, Any]) -> None:
        rlimits = self.expect(process, "rlimits", "process.rlimits", "array")
        seen: set[str] = set()
        for i, rlimit in enumerate(rlimits or ()):
            path = f"process.rlimits[{i}]"
            if not isinstance(rlimit, dict):
                self.add("oci.field_type", path, f"expected an object, got {_type_name(rlimit)}")
                continue
            kind = rlimit.get("type")
            if not isinstance(kind, str):
                self.add("oci.field_type", f"{path}.type", f"a string, not {_type_name(kind)}")
            elif kind in seen:
                self.add("oci.rlimit_duplicate", f"{path}.type", f"{shown(kind)} again")
            else:
                seen.add(kind)
            for key in ("soft", "hard"):
                if not _is_uint(rlimit.get(key), _UINT64_MAX):
                    self.add(
                        "oci.field_type",
                        f"{path}.{key}",
                        f"REQUIRED unsigned 64-bit integer, got {_type_name(rlimit.get(key))}",
                    )

    def mounts(self) -> None:
        mounts = self.expect(self.spec, "mounts", "mounts", "array")
        for i, mount in enumerate(mounts or ()):
            path = f"mounts[{i}]"
            if not isinstance(mount, dict):
                self.add("oci.field_type", path, f"expected an object, got {_type_name(mount)}")
                continue
            destination = mount.get("destination")
            if not isinstance(destination, str):
                self.add(
                    "oci.mount_destination_missing",
                    f"{path}.destination",
                    f"a string, not {_type_name(destination)}",
                )
            elif self.posix and not destination.startswith("/"):
                self.add(
                    "oci.mount_destination_relative",
                    f"{path}.destination",
                    f"{shown(destination)} is relative: read as relative to /, deprecated",
                )
            for key in ("type", "source"):
                self.expect(mount, key, f"{path}.{key}", "string")
            self.expect(mount, "options", f"{path}.options", "strings")

    def hooks(self) -> None:
        hooks = self.expect(self.spec, "hooks", "hooks", "object")
        if hooks is None:
            return
        for stage in hooks:
            path = f"hooks.{stage}"
            if stage not in HOOK_STAGES:
                self.add(
                    "oci.hook_stage_unknown",
                    path,
                    f"not a hook stage ({', '.join(HOOK_STAGES)}): never run",
                )
                continue
            if stage == "prestart":
                self.add(
                    "oci.hook_prestart_deprecated",
                    path,
                    "deprecated: use createRuntime, createContainer or startContainer",
                )
            entries = self.expect(hooks, stage, path, "array")
            for i, hook in enumerate(entries or ()):
                self.hook(hook, f"{path}[{i}]")

    def hook(self, hook: object, path: str) -> None:
        if not isinstance(hook, dict):
            self.add("oci.field_type", path, f"expected an object, got {_type_name(hook)}")
            return
        hook_path = hook.get("path")
        if not isinstance(hook_path, str):
            self.add(
                "oci.hook_path_missing", f"{path}.path", f"a string, not {_type_name(hook_path)}"
            )
        elif not hook_path.startswith("/"):
            self.add("oci.hook_path_relative", f"{path}.path", f"not absolute: {shown(hook_path)}")
        args = hook.get("args")
        if args is not None and not _strings(args):
            self.add("oci.hook_args_type", f"{path}.args", "an array of strings")
        env = hook.get("env")
        if env is not None and not _strings(env):
            self.add("oci.env_type", f"{path}.env", "an array of strings")
        timeout = hook.get("timeout")
        if timeout is not None and not (_is_int64(timeout) and timeout >= 1):
            got = str(timeout) if isinstance(timeout, int | float) else _type_name(timeout)
            self.add("oci.hook_timeout", f"{path}.timeout", f"an integer >= 1 (seconds), not {got}")

    def annotations(self) -> None:
        annotations = self.spec.get("annotations")
        if annotations is None:
            return
        if not isinstance(annotations, dict):
            self.add(
                "oci.annotations_type", "annotations", f"an object, not {_type_name(annotations)}"
            )
            return
        for key, value in annotations.items():
            if key == "":
                self.add("oci.annotation_key_empty", "annotations", "an empty annotation key")
            if not isinstance(value, str):
                self.add(
                    "oci.annotation_value_type",
                    f"annotations.{key}",
                    f"a string, not {_type_name(value)}",
                )

    def linux(self) -> None:
        linux = self.expect(self.spec, "linux", "linux", "object")
        if linux is None:
            return
        namespaces = self.expect(linux, "namespaces", "linux.namespaces", "array")
        seen: set[str] = set()
        for i, ns in enumerate(namespaces or ()):
            path = f"linux.namespaces[{i}]"
            if not isinstance(ns, dict):
                self.add("oci.field_type", path, f"expected an object, got {_type_name(ns)}")
                continue
            kind = ns.get("type")
            if not isinstance(kind, str) or kind not in NAMESPACE_TYPES:
                shown_kind = shown(kind) if isinstance(kind, str) else _type_name(kind)
                self.add(
                    "oci.namespace_type",
                    f"{path}.type",
                    f"{shown_kind} is none of {', '.join(sorted(NAMESPACE_TYPES))}",
                )
            elif kind in seen:
                self.add("oci.namespace_duplicate", f"{path}.type", f"{kind} again")
            else:
                seen.add(kind)
            ns_path = self.expect(ns, "path", f"{path}.path", "string")
            if ns_path is not None and not ns_path.startswith("/"):
                self.add(
                    "oci.namespace_path_relative", f"{path}.path", f"not absolute: {shown(ns_path)}"
                )


def check_spec(spec: object, bundle_dir: Path | None = None) -> list[Problem]:
    """The runtime-spec problems of a decoded config.json (the module docstring).
    ``bundle_dir``: the bundle it was read from, to look for its root filesystem; ``None``
    for a bare config.json."""
    if not isinstance(spec, dict):
        return [problem("oci.not_an_object", "", f"a JSON object, not {_type_name(spec)}")]
    return _Checker(spec, bundle_dir).run()


def spec_carriers(spec: Mapping[str, Any]) -> list[Carrier]:
    """What the bridge reads from a non-CRI container's spec, in its order: the OCI
    annotations (string entries), then ``process.env``."""
    annotations = spec.get("annotations")
    values = (
        {k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(annotations, dict)
        else {}
    )
    process = spec.get("process")
    env = process.get("env") if isinstance(process, dict) else None
    entries: list[tuple[str, str, str]] = []
    if isinstance(env, list):
        for i, entry in enumerate(env):
            if isinstance(entry, str) and "=" in entry:
                name, _, value = entry.partition("=")
                entries.append((f"process.env[{i}]", name, value))
    return [
        map_carrier("annotation", "annotations", values),
        env_carrier("env", "process.env", entries),
    ]


def _env_duplicates(spec: Mapping[str, Any], rules: Rules) -> list[Problem]:
    """``trace.env_duplicate``: a trace-context variable defined twice, differently."""
    process = spec.get("process")
    env = process.get("env") if isinstance(process, dict) else None
    if not isinstance(env, list):
        return []
    names = {name for pair in rules.env_keys for name in pair}
    first: dict[str, str] = {}
    problems: list[Problem] = []
    for i, entry in enumerate(env):
        if not isinstance(entry, str):
            continue
        name, sep, value = entry.partition("=")
        if not sep or name not in names:
            continue
        if name not in first:
            first[name] = value
        elif first[name] != value:
            problems.append(
                problem(
                    "trace.env_duplicate",
                    f"process.env[{i}]",
                    f"{name} again, with another value: the bridge reads the first, the "
                    "process sees this one",
                )
            )
    return problems


def validate_spec(
    spec: object, *, namespace: str, rules: Rules, bundle_dir: Path | None = None
) -> list[Problem]:
    """Every problem of one decoded config.json: the runtime-spec rules, then the contract
    for a container of containerd namespace ``namespace``. Never raises."""
    problems = check_spec(spec, bundle_dir)
    if not isinstance(spec, dict):
        return problems
    carriers = spec_carriers(spec)
    annotations = carriers[0]
    cri = CRI_TYPE in annotations.values
    problems += check_trace(
        carriers,
        rules,
        namespace=namespace,
        missing_path="annotations",
        required=False if cri else None,
    )
    problems += _env_duplicates(spec, rules)
    problems += check_readiness_target([annotations], rules)
    problems += check_limits([annotations], rules)
    return problems
