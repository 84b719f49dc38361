#!/usr/bin/env bash
# Deploy, then let the container runtime pass or halt the pipeline (docs/rollouts.md).
#
#   OTELBRIDGE_PROCESSORS=http://otelbridge-processor:9465 OTELBRIDGE_EXPECT=20 \
#     examples/ci/deploy-and-gate.sh ./deploy.sh
#
# 1. `otelbridge rollout exec` runs the deploy command inside a new `rollout` span: the
#    command finds TRACEPARENT in its environment (and `{{traceparent}}`, `{{trace_id}}`
#    in its arguments are replaced), so it can put it on the pod template
#    (tracing.k8s.io/traceparent, e.g. with `otelbridge rollout annotate`); the bridge
#    then links every container startup to this trace. The span ends with the command's
#    exit code, which is passed through: a failed deploy fails this script before any
#    gate. `--carrier` keeps the trace context in a file for the gate.
# 2. `otelbridge gate` waits until the processors saw OTELBRIDGE_EXPECT startups of that
#    trace (or OTELBRIDGE_TIMEOUT passed) and exits:
#      0  pass          the startups kept the SLA: the pipeline continues
#      1  halt          a budget's p99 was over, or startups failed (crashed before ready,
#                       timed out), or too few were traced: stop, roll back
#      2  insufficient  too few startups seen by the timeout, or no processor answered (the
#                       report says which and why); also bad usage. Not a pass: this
#                       script fails on it too, with its own message.
#
# Environment:
#   OTELBRIDGE_PROCESSORS  the processors' API URLs, comma-separated (required)
#   OTELBRIDGE_EXPECT      container startups the deploy makes: pods x (containers + 1)
#                          (required)
#   OTELBRIDGE_TIMEOUT     how long to wait for them (default 10m)
#   OTELBRIDGE_TOKEN_FILE  the processors' bearer token, if they require one
#   ROLLOUT_NAME           the rollout's name in traces (default: the CI commit, or "deploy")
#   OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* variables: where the rollout span goes
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 DEPLOY-COMMAND [ARGS...]" >&2
    exit 2
fi

processors=${OTELBRIDGE_PROCESSORS:?set OTELBRIDGE_PROCESSORS to the processors URLs}
expect=${OTELBRIDGE_EXPECT:?set OTELBRIDGE_EXPECT to the number of container startups}
timeout=${OTELBRIDGE_TIMEOUT:-10m}
name=${ROLLOUT_NAME:-${CI_COMMIT_SHORT_SHA:-${GITHUB_SHA:-deploy}}}

# the rollout's carrier file: `rollout exec --carrier` writes the span's trace context
# there (marked ended when the deploy command ends) and `gate --carrier` reads it
workdir=$(mktemp -d "${TMPDIR:-/tmp}/otelbridge-rollout.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
carrier=$workdir/rollout.json

# Deploy inside the rollout span; its exit code is the span's and, under set -e, ends
# this script when the deploy failed.
otelbridge rollout exec --name "$name" --carrier "$carrier" -- "$@"

# The gate's arguments replace the deploy command's ($@ is free now); plain sh syntax.
set -- --processor "$processors" --carrier "$carrier" --expect "$expect" --timeout "$timeout"
if [ -n "${OTELBRIDGE_TOKEN_FILE:-}" ]; then
    set -- "$@" --token-file "$OTELBRIDGE_TOKEN_FILE"
fi

# The gate's exit code decides; `|| status=$?` keeps set -e from ending the script first.
status=0
otelbridge gate "$@" || status=$?
case "$status" in
    0)
        echo "runtime gate: pass" >&2
        ;;
    1)
        echo "runtime gate: HALT: the rollout broke the container startup SLA" >&2
        ;;
    2)
        echo "runtime gate: insufficient data: not enough startups seen within $timeout" >&2
        ;;
    *)
        echo "runtime gate: otelbridge gate failed (exit $status)" >&2
        ;;
esac
exit "$status"
