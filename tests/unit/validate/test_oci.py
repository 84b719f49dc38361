"""The OCI runtime-spec rules: one seeded problem at a time in a real containerd config.json."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otelbridge.validate.oci import check_spec, validate_spec
from tests.unit.validate.helpers import (
    CONTAINERD_CONFIG,
    OTHER_TRACEPARENT,
    RULES,
    TRACEPARENT,
    at,
    codes,
    rules,
    spec,
)

Mutation = Callable[[dict[str, Any]], object]


def mutated(mutate: Mutation) -> dict[str, Any]:
    doc = copy.deepcopy(CONTAINERD_CONFIG)
    mutate(doc)
    return doc


def test_the_config_containerd_wrote_is_clean() -> None:
    assert validate_spec(spec(), namespace="default", rules=RULES) == []


@pytest.mark.parametrize(
    ("mutate", "path", "code"),
    [
        (lambda d: d.pop("ociVersion"), "ociVersion", "oci.version_missing"),
        (lambda d: d.update(ociVersion=None), "ociVersion", "oci.version_missing"),
        (lambda d: d.update(ociVersion=1.0), "ociVersion", "oci.version_type"),
        (lambda d: d.update(ociVersion="1.0"), "ociVersion", "oci.version_format"),
        (lambda d: d.update(ociVersion="01.0.0"), "ociVersion", "oci.version_format"),
        (lambda d: d.update(ociVersion="1.0.2-dev\n"), "ociVersion", "oci.version_format"),
        (lambda d: d.update(ociVersion="1.\u0660.0"), "ociVersion", "oci.version_format"),
        (lambda d: d.pop("root"), "root", "oci.root_missing"),
        (lambda d: d.update(root="rootfs"), "root", "oci.field_type"),
        (lambda d: d["root"].pop("path"), "root.path", "oci.root_path"),
        (lambda d: d["root"].update(path=""), "root.path", "oci.root_path"),
        (lambda d: d["root"].update(readonly="yes"), "root.readonly", "oci.field_type"),
        (lambda d: d.pop("process"), "process", "oci.process_missing"),
        (lambda d: d.update(process=[]), "process", "oci.field_type"),
        (lambda d: d["process"].pop("args"), "process.args", "oci.args_missing"),
        (lambda d: d["process"].update(args="sleep 30"), "process.args", "oci.args_type"),
        (lambda d: d["process"].update(args=["sleep", 30]), "process.args", "oci.args_type"),
        (lambda d: d["process"].update(args=[]), "process.args", "oci.args_empty"),
        (lambda d: d["process"].pop("cwd"), "process.cwd", "oci.cwd_missing"),
        (lambda d: d["process"].update(cwd="app"), "process.cwd", "oci.cwd_relative"),
        (lambda d: d["process"].update(env="A=1"), "process.env", "oci.env_type"),
        (lambda d: d["process"]["env"].append(3), "process.env[1]", "oci.env_type"),
        (lambda d: d["process"]["env"].append("NOVALUE"), "process.env[1]", "oci.env_format"),
        (lambda d: d["process"]["env"].append("=x"), "process.env[1]", "oci.env_format"),
        (lambda d: d["process"]["env"].append("A=\x00"), "process.env[1]", "oci.env_format"),
        (lambda d: d["process"].update(terminal="no"), "process.terminal", "oci.field_type"),
        (lambda d: d["process"]["user"].update(uid=-1), "process.user.uid", "oci.field_type"),
        (lambda d: d["process"]["user"].update(gid="0"), "process.user.gid", "oci.field_type"),
        (lambda d: d["process"]["user"].update(uid=True), "process.user.uid", "oci.field_type"),
        (
            lambda d: d["process"]["user"].update(additionalGids=[2**32]),
            "process.user.additionalGids[0]",
            "oci.field_type",
        ),
        (
            lambda d: d["process"]["capabilities"].update(bounding="CAP_KILL"),
            "process.capabilities.bounding",
            "oci.field_type",
        ),
        (
            lambda d: d["process"].update(
                rlimits=[
                    {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2},
                    {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2},
                ]
            ),
            "process.rlimits[1].type",
            "oci.rlimit_duplicate",
        ),
        (
            lambda d: d["process"].update(rlimits=[{"type": "RLIMIT_NOFILE", "soft": 1}]),
            "process.rlimits[0].hard",
            "oci.field_type",
        ),
        (lambda d: d.update(mounts={}), "mounts", "oci.field_type"),
        (lambda d: d["mounts"].append("/tmp"), "mounts[7]", "oci.field_type"),
        (lambda d: d["mounts"][0].pop("destination"), "mounts[0].destination",
         "oci.mount_destination_missing"),
        (lambda d: d["mounts"][0].update(destination="proc"), "mounts[0].destination",
         "oci.mount_destination_relative"),
        (lambda d: d["mounts"][0].update(options="ro"), "mounts[0].options", "oci.field_type"),
        (lambda d: d.update(hooks=[]), "hooks", "oci.field_type"),
        (lambda d: d.update(hooks={"preStart": []}), "hooks.preStart", "oci.hook_stage_unknown"),
        (lambda d: d.update(hooks={"prestart": []}), "hooks.prestart",
         "oci.hook_prestart_deprecated"),
        (lambda d: d.update(hooks={"poststop": {}}), "hooks.poststop", "oci.field_type"),
        (lambda d: d.update(hooks={"poststop": ["/bin/true"]}), "hooks.poststop[0]",
         "oci.field_type"),
        (lambda d: d.update(hooks={"createRuntime": [{"args": []}]}),
         "hooks.createRuntime[0].path", "oci.hook_path_missing"),
        (lambda d: d.update(hooks={"createRuntime": [{"path": "bin/hook"}]}),
         "hooks.createRuntime[0].path", "oci.hook_path_relative"),
        (lambda d: d.update(hooks={"startContainer": [{"path": "/h", "args": "x"}]}),
         "hooks.startContainer[0].args", "oci.hook_args_type"),
        (lambda d: d.update(hooks={"startContainer": [{"path": "/h", "env": [1]}]}),
         "hooks.startContainer[0].env", "oci.env_type"),
        (lambda d: d.update(hooks={"poststart": [{"path": "/h", "timeout": 0}]}),
         "hooks.poststart[0].timeout", "oci.hook_timeout"),
        (lambda d: d.update(hooks={"poststart": [{"path": "/h", "timeout": -5}]}),
         "hooks.poststart[0].timeout", "oci.hook_timeout"),
        (lambda d: d.update(hooks={"poststart": [{"path": "/h", "timeout": 1.5}]}),
         "hooks.poststart[0].timeout", "oci.hook_timeout"),
        (lambda d: d.update(hooks={"poststart": [{"path": "/h", "timeout": True}]}),
         "hooks.poststart[0].timeout", "oci.hook_timeout"),
        (lambda d: d.update(hooks={"poststart": [{"path": "/h", "timeout": "5"}]}),
         "hooks.poststart[0].timeout", "oci.hook_timeout"),
        (lambda d: d.update(hooks={"poststart": [{"path": "/h", "timeout": 2**63}]}),
         "hooks.poststart[0].timeout", "oci.hook_timeout"),
        (lambda d: d.update(annotations=["a=b"]), "annotations", "oci.annotations_type"),
        (lambda d: d.update(annotations={"": "x"}), "annotations", "oci.annotation_key_empty"),
        (lambda d: d.update(annotations={"a": 1}), "annotations.a", "oci.annotation_value_type"),
        (lambda d: d.update(hostname=7), "hostname", "oci.field_type"),
        (lambda d: d["linux"].update(namespaces={}), "linux.namespaces", "oci.field_type"),
        (lambda d: d["linux"]["namespaces"].append({"type": "net"}),
         "linux.namespaces[5].type", "oci.namespace_type"),
        (lambda d: d["linux"]["namespaces"].append({"type": "pid"}),
         "linux.namespaces[5].type", "oci.namespace_duplicate"),
        (lambda d: d["linux"]["namespaces"].append({"type": "user", "path": "proc/1/ns/user"}),
         "linux.namespaces[5].path", "oci.namespace_path_relative"),
    ],
)  # fmt: skip
def test_each_rule_is_reported_where_it_is_broken(mutate: Mutation, path: str, code: str) -> None:
    problems = check_spec(mutated(mutate))
    assert at(problems, path) == [code], problems
    assert len(problems) == 1, problems


def test_the_real_config_has_the_shape_the_table_assumes() -> None:
    # the indexes above (mounts[7], linux.namespaces[5], process.env[1]) are its own
    assert len(CONTAINERD_CONFIG["mounts"]) == 7
    assert len(CONTAINERD_CONFIG["linux"]["namespaces"]) == 5
    assert len(CONTAINERD_CONFIG["process"]["env"]) == 1


def test_valid_hooks_pass() -> None:
    hook = {"path": "/usr/bin/hook", "args": ["hook", "x"], "env": ["A=1"], "timeout": 5}
    doc = spec(hooks={stage: [hook] for stage in ("createRuntime", "startContainer", "poststop")})
    assert check_spec(doc) == []


def test_a_null_is_absent() -> None:
    assert check_spec(spec(hostname=None, mounts=None)) == []
    doc = spec(hooks={"poststart": [{"path": "/h", "timeout": None, "args": None}]})
    assert check_spec(doc) == []


def test_not_an_object() -> None:
    for value in ([], "x", 3, None, True):
        assert codes(check_spec(value)) == ["oci.not_an_object"]


def test_windows_relaxes_the_posix_rules() -> None:
    doc = {
        "ociVersion": "1.1.0",
        "windows": {"layerFolders": []},
        "process": {"cwd": "C:\\", "commandLine": "cmd.exe"},
        "mounts": [{"destination": "C:\\data"}],
    }
    assert check_spec(doc) == []
    doc["process"] = {"cwd": "C:\\"}
    assert codes(check_spec(doc)) == ["oci.args_missing"]


def test_a_bundle_directory_needs_its_root_filesystem(tmp_path: Path) -> None:
    assert codes(check_spec(spec(), tmp_path)) == ["oci.root_path_not_found"]
    (tmp_path / "rootfs").mkdir()
    assert check_spec(spec(), tmp_path) == []
    assert check_spec(spec(root={"path": str(tmp_path / "rootfs")}), tmp_path / "elsewhere") == []
    assert codes(check_spec(spec(root={"path": "a\x00b"}), tmp_path)) == ["oci.root_path_not_found"]


def test_the_trace_contract_reads_annotations_then_the_environment() -> None:
    doc = spec()
    doc["process"]["env"].append(f"TRACEPARENT={TRACEPARENT}")
    assert validate_spec(doc, namespace="prod", rules=rules(require_trace_context=("prod",))) == []
    doc["annotations"] = {"traceparent": OTHER_TRACEPARENT}
    problems = validate_spec(doc, namespace="prod", rules=RULES)
    assert at(problems, "process.env[1]") == ["trace.shadowed"]
    doc["annotations"] = {"traceparent": "ff" + TRACEPARENT[2:], "tracestate": "a=1"}
    problems = validate_spec(doc, namespace="prod", rules=RULES)
    assert at(problems, "annotations.traceparent") == ["traceparent.version_forbidden"]


def test_a_traceparent_is_required_where_the_namespace_says_so() -> None:
    required = rules(require_trace_context=("prod*",))
    problems = validate_spec(spec(), namespace="prod-eu", rules=required)
    assert at(problems, "annotations") == ["trace.missing"]
    assert problems[0].severity == "error"
    assert validate_spec(spec(), namespace="staging", rules=required) == []


def test_a_cri_app_container_follows_its_pod() -> None:
    required = rules(require_trace_context=("*",))
    doc = spec(annotations={"io.kubernetes.cri.container-type": "container"})
    assert validate_spec(doc, namespace="k8s.io", rules=required) == []
    doc["annotations"]["io.kubernetes.cri.container-type"] = "sandbox"
    assert validate_spec(doc, namespace="k8s.io", rules=required) == []  # in the pod's metadata
    doc["annotations"]["traceparent"] = "ff" + TRACEPARENT[2:]
    assert codes(validate_spec(doc, namespace="k8s.io", rules=required)) == [
        "traceparent.version_forbidden"
    ]
    doc["annotations"].pop("io.kubernetes.cri.container-type")
    doc["annotations"].pop("traceparent")
    assert codes(validate_spec(doc, namespace="k8s.io", rules=required)) == ["trace.missing"]


def test_a_trace_variable_defined_twice_differently() -> None:
    doc = spec()
    doc["process"]["env"] += [f"TRACEPARENT={TRACEPARENT}", f"TRACEPARENT={OTHER_TRACEPARENT}"]
    problems = validate_spec(doc, namespace="default", rules=RULES)
    assert at(problems, "process.env[2]") == ["trace.env_duplicate"]
    doc["process"]["env"][2] = f"TRACEPARENT={TRACEPARENT}"
    assert validate_spec(doc, namespace="default", rules=RULES) == []


def test_readiness_and_limits_on_annotations() -> None:
    doc = spec(annotations={"otelbridge.io/readiness": "ftp://web:80", "note": "a\nb"})
    problems = validate_spec(doc, namespace="default", rules=RULES)
    assert at(problems, "annotations.otelbridge.io/readiness") == ["readiness.target_invalid"]
    assert at(problems, "annotations.note") == ["limits.control_characters"]
