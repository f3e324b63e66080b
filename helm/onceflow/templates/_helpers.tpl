{{/*
Names, labels and computed values shared by the templates.
*/}}

{{/* The chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "onceflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources. The StatefulSet's pods are <fullname>-<ordinal> and
the controller adds a revision hash label to them, so keep it short (52 characters).
*/}}
{{- define "onceflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service that gives each pod a stable DNS name. */}}
{{- define "onceflow.headlessName" -}}
{{- printf "%s-headless" (include "onceflow.fullname" .) }}
{{- end }}

{{- define "onceflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the release's pods: never change them on upgrade (immutable selector). */}}
{{- define "onceflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "onceflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "onceflow.labels" -}}
helm.sh/chart: {{ include "onceflow.chart" . }}
{{ include "onceflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: onceflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "onceflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "onceflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: repository@digest when a digest is given, else repository:tag (tag = appVersion). */}}
{{- define "onceflow.image" -}}
{{- $repo := required "image.repository is required" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- if not (hasPrefix "sha256:" .Values.image.digest) }}
{{- fail (printf "image.digest must look like sha256:<hex>, got %q" .Values.image.digest) }}
{{- end }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* true when the chart itself creates the credentials Secret. */}}
{{- define "onceflow.createSecret" -}}
{{- $c := .Values.credentials }}
{{- if and (not $c.existingSecret) (or $c.saslUsername $c.saslPassword $c.sslPassword $c.httpToken) }}true{{ end }}
{{- end }}

{{/* The credentials Secret the pods read, or "" when there is none. */}}
{{- define "onceflow.secretName" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else if include "onceflow.createSecret" . }}
{{- include "onceflow.fullname" . }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the worker's shutdown grace plus a margin, or the value given,
which must leave the worker its whole grace (else SIGKILL lands mid-commit).
*/}}
{{- define "onceflow.terminationGracePeriodSeconds" -}}
{{- $graceMs := int .Values.app.shutdownGraceMs }}
{{- $graceS := div (add $graceMs 999) 1000 }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $graceS (int .Values.terminationGraceMarginSeconds) }}
{{- else }}
{{- $given := int .Values.terminationGracePeriodSeconds }}
{{- if le $given $graceS }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than app.shutdownGraceMs/1000 (%d s): leave the worker time to drain and commit, plus a margin, or leave terminationGracePeriodSeconds empty to compute it" $given $graceS) }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/*
Fail unless .value is a whole number >= .min: the worker would refuse it at start (exit 2, in a
restart loop), so say it at render time. Numbers from YAML files arrive as float64, from --set
as int64.
*/}}
{{- define "onceflow.requireWholeNumber" -}}
{{- $v := .value }}
{{- if not (or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "float64" $v)) }}
{{- fail (printf "%s must be a whole number >= %d (%s), got %v" .name .min .meaning $v) }}
{{- end }}
{{- if or (ne (float64 $v) (floor $v)) (lt (float64 $v) (float64 .min)) }}
{{- fail (printf "%s must be a whole number >= %d (%s), got %v" .name .min .meaning $v) }}
{{- end }}
{{- end }}

{{/* Reject values that cannot work, with the fix in the message. */}}
{{- define "onceflow.validate" -}}
{{- $ha := .Values.highAvailability }}
{{- include "onceflow.requireWholeNumber" (dict "name" "highAvailability.standbyReplicas" "value" $ha.standbyReplicas "min" 0 "meaning" "standby copies per task; 0 for none") }}
{{- include "onceflow.requireWholeNumber" (dict "name" "highAvailability.acceptableRecoveryLag" "value" $ha.acceptableRecoveryLag "min" 0 "meaning" "changelog records") }}
{{- include "onceflow.requireWholeNumber" (dict "name" "highAvailability.maxWarmupReplicas" "value" $ha.maxWarmupReplicas "min" 1 "meaning" "warm-up copies at a time") }}
{{- include "onceflow.requireWholeNumber" (dict "name" "highAvailability.probingRebalanceIntervalMs" "value" $ha.probingRebalanceIntervalMs "min" 1000 "meaning" "milliseconds") }}
{{- $protocols := list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL" }}
{{- if not (has .Values.kafka.securityProtocol $protocols) }}
{{- fail (printf "kafka.securityProtocol must be one of %s, got %q" (join ", " $protocols) .Values.kafka.securityProtocol) }}
{{- end }}
{{- $guarantees := list "exactly_once" "exactly_once_v2" "at_least_once" }}
{{- if not (has .Values.app.processingGuarantee $guarantees) }}
{{- fail (printf "app.processingGuarantee must be one of %s, got %q" (join ", " $guarantees) .Values.app.processingGuarantee) }}
{{- end }}
{{- if and (hasPrefix "SASL" .Values.kafka.securityProtocol) (not (include "onceflow.secretName" .)) }}
{{- fail (printf "kafka.securityProtocol=%s needs SASL credentials: set credentials.existingSecret (keys %s, %s) or credentials.saslUsername/saslPassword" .Values.kafka.securityProtocol .Values.credentials.keys.saslUsername .Values.credentials.keys.saslPassword) }}
{{- end }}
{{- if and .Values.kafka.tls.existingSecret (not (hasSuffix "SSL" .Values.kafka.securityProtocol)) }}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol=%s does not use TLS: use SSL or SASL_SSL" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
