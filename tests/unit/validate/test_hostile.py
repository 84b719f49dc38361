"""Any decoded JSON or YAML value: the checks report it, they never raise."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.validate.manifests import validate_documents
from otelbridge.validate.oci import validate_spec
from otelbridge.validate.report import TargetResult, render_json, render_text
from tests.unit.validate.helpers import CONTAINERD_CONFIG, rules

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["ociVersion", "root", "process", "mounts", "hooks", "annotations", "linux", "hostname"]
)
SUBKEYS = st.sampled_from(
    ["args", "env", "cwd", "user", "rlimits", "capabilities", "consoleSize", "namespaces"]
)
STRICT = rules(require_trace_context=("*",), require_readiness=True)


@settings(max_examples=150, deadline=None)
@given(key=KEYS, sub=SUBKEYS, value=JSON, nested=st.booleans())
def test_a_config_json_with_any_value_anywhere(
    key: str, sub: str, value: Any, nested: bool
) -> None:
    spec: dict[str, Any] = copy.deepcopy(CONTAINERD_CONFIG)
    target = spec.get(key)
    if nested and isinstance(target, dict):
        target[sub] = value
    else:
        spec[key] = value
    problems = validate_spec(spec, namespace="prod", rules=STRICT)
    render_text([TargetResult("t", problems)])
    render_json([TargetResult("t", problems)])


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["Pod", "Deployment", "CronJob", "List", "Rollout", "PodTemplate"]),
    body=st.dictionaries(
        st.sampled_from(["spec", "metadata", "items", "template", "apiVersion"]), JSON, max_size=4
    ),
)
def test_a_manifest_of_any_shape(kind: str, body: dict[str, Any]) -> None:
    validate_documents([{"kind": kind, **body}], rules=STRICT)


@settings(max_examples=100, deadline=None)
@given(doc=JSON)
def test_any_document(doc: Any) -> None:
    validate_documents([doc], rules=STRICT)
    validate_spec(doc, namespace="x", rules=STRICT)
