#!/usr/bin/env bash
# Validate a rollout's manifests against the container execution contract, then apply
# them only when no error was found (docs/validate.md).
#
#   OTELBRIDGE_CONFIG=deploy/otelbridge.toml examples/ci/validate-before-apply.sh k8s/app/
#   kustomize build overlays/prod | examples/ci/validate-before-apply.sh -
#
# Each argument is what `kubectl apply -f` takes (a manifest file or a directory of
# them), or - for manifests on standard input. `otelbridge validate` checks the pod
# templates with the bridge's own rules (the trace context, the readiness target and
# probes, the tenant limits; [validate] in the config says which namespaces must carry a
# traceparent and whether readiness probes are required). Its exit code decides:
#   0  no error (warnings are printed): kubectl apply runs
#   1  contract errors: nothing is applied, this script exits 1
#   2  an input could not be read, or a bad config: nothing is applied, exit 2
#
# Environment:
#   OTELBRIDGE_CONFIG  the bridge's config file (default: none, the built-in rules)
#   OTELBRIDGE_REPORT  where the --json report is written, for the CI's artifacts
#                      (default: otelbridge-validate.json in the working directory)
#   KUBECTL            the kubectl command (default: kubectl); its extra arguments, e.g.
#                      a context, go in KUBECTL_ARGS (shell words)
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 MANIFEST-OR-DIR... (or - for standard input)" >&2
    exit 2
fi

report=${OTELBRIDGE_REPORT:-otelbridge-validate.json}
kubectl=${KUBECTL:-kubectl}
read -r -a kubectl_args <<< "${KUBECTL_ARGS:-}"

workdir=$(mktemp -d "${TMPDIR:-/tmp}/otelbridge-validate.XXXXXX")
trap 'rm -rf "$workdir"' EXIT

# Standard input is read once: kept in a file, so the same manifests are validated (twice:
# the readable report, the JSON one) and then applied.
targets=()
for arg in "$@"; do
    if [ "$arg" = "-" ]; then
        cat > "$workdir/stdin.yaml"
        targets+=("$workdir/stdin.yaml")
    else
        targets+=("$arg")
    fi
done

config=()
if [ -n "${OTELBRIDGE_CONFIG:-}" ]; then
    config=(--config "$OTELBRIDGE_CONFIG")
fi

# The readable report for the log; `|| status=$?` keeps set -e from ending the script.
status=0
otelbridge validate "${config[@]}" "${targets[@]}" || status=$?
# The same findings as JSON for the artifacts (its exit code is the same).
otelbridge validate "${config[@]}" --json "${targets[@]}" > "$report" || true

case "$status" in
    0) ;;
    1)
        echo "validate-before-apply: contract errors (see above, $report): not applied" >&2
        exit 1
        ;;
    *)
        echo "validate-before-apply: the manifests could not all be checked: not applied" >&2
        exit 2
        ;;
esac

apply=()
for target in "${targets[@]}"; do
    apply+=(-f "$target")
done
"$kubectl" "${kubectl_args[@]}" apply "${apply[@]}"
