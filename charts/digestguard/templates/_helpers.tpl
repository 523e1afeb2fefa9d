{{/* Names, labels and the pieces several templates share. */}}

{{- define "digestguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "digestguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "digestguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "digestguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "digestguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "digestguard.labels" -}}
helm.sh/chart: {{ include "digestguard.chart" . }}
{{ include "digestguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: digestguard
{{- end -}}

{{- define "digestguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "digestguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Both webhook configurations and the Service share the full name. */}}
{{- define "digestguard.webhookConfigurationName" -}}
{{- include "digestguard.fullname" . -}}
{{- end -}}

{{- define "digestguard.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the webhook serves from: its own (selfManaged) or a mounted one. */}}
{{/* The Lease whose holder runs the running-image audit. */}}
{{- define "digestguard.auditLeaseName" -}}
{{- printf "%s-audit" (include "digestguard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "digestguard.tlsSecretName" -}}
{{- $tls := .Values.tls -}}
{{- if eq $tls.mode "selfManaged" -}}
{{- default (printf "%s-tls" (include "digestguard.fullname" .)) $tls.selfManaged.secretName -}}
{{- else if eq $tls.mode "certManager" -}}
{{- printf "%s-serving-cert" (include "digestguard.fullname" .) -}}
{{- else -}}
{{- $tls.existingSecret.name -}}
{{- end -}}
{{- end -}}

{{- define "digestguard.certificateName" -}}
{{- printf "%s-serving" (include "digestguard.fullname" .) -}}
{{- end -}}

{{- define "digestguard.defaultPolicyName" -}}
{{- default (printf "%s-ecr" (include "digestguard.fullname" .)) .Values.defaultPolicy.name -}}
{{- end -}}

{{/* Where a mounted certificate (certManager, existingSecret) lives in the container. */}}
{{- define "digestguard.tlsMountPath" -}}/etc/digestguard/tls{{- end -}}
{{- define "digestguard.selfManagedTlsDir" -}}/tmp/tls{{- end -}}
{{/* Where the registries' CA bundle (registries.caBundle) is mounted, and its ConfigMap. */}}
{{- define "digestguard.registryCaMountPath" -}}/etc/digestguard/registry-ca{{- end -}}
{{- define "digestguard.registryCaConfigMapName" -}}
{{- printf "%s-registry-ca" (include "digestguard.fullname" .) -}}
{{- end -}}

{{/*
The admission handlers. Each id is both the kopf handler id and the URL path of its
webhook (webhook.names in the Python package); tests/integration/test_chart_render.py
fails if these drift from it. `rule` is the one rule that routes requests to it.
*/}}
{{- define "digestguard.mutatingHandlers" -}}
- id: mutate-pods
  rule: {apiGroups: [""], apiVersions: [v1], resources: [pods], operations: [CREATE, UPDATE]}
- id: mutate-ephemeralcontainers
  rule: {apiGroups: [""], apiVersions: [v1], resources: [pods/ephemeralcontainers], operations: [UPDATE]}
{{- end -}}

{{- define "digestguard.validatingHandlers" -}}
- id: validate-pods
  rule: {apiGroups: [""], apiVersions: [v1], resources: [pods], operations: [CREATE, UPDATE]}
- id: validate-ephemeralcontainers
  rule: {apiGroups: [""], apiVersions: [v1], resources: [pods/ephemeralcontainers], operations: [UPDATE]}
{{- if .Values.webhook.validateWorkloads }}
- id: validate-deployments
  rule: {apiGroups: [apps], apiVersions: [v1], resources: [deployments], operations: [CREATE, UPDATE]}
- id: validate-statefulsets
  rule: {apiGroups: [apps], apiVersions: [v1], resources: [statefulsets], operations: [CREATE, UPDATE]}
- id: validate-daemonsets
  rule: {apiGroups: [apps], apiVersions: [v1], resources: [daemonsets], operations: [CREATE, UPDATE]}
- id: validate-replicasets
  rule: {apiGroups: [apps], apiVersions: [v1], resources: [replicasets], operations: [CREATE, UPDATE]}
- id: validate-replicationcontrollers
  rule: {apiGroups: [""], apiVersions: [v1], resources: [replicationcontrollers], operations: [CREATE, UPDATE]}
- id: validate-jobs
  rule: {apiGroups: [batch], apiVersions: [v1], resources: [jobs], operations: [CREATE, UPDATE]}
- id: validate-cronjobs
  rule: {apiGroups: [batch], apiVersions: [v1], resources: [cronjobs], operations: [CREATE, UPDATE]}
{{- end }}
{{- end -}}

{{/*
Namespaces the webhooks never see: kube-system (by default), the release namespace
(always: the webhook's own pods must start while it is down) and any namespace
labelled digestguard.io/exclude=true; ANDed with webhook.namespaceSelector.
*/}}
{{- define "digestguard.namespaceSelector" -}}
{{- $excluded := concat .Values.webhook.excludeNamespaces (list .Release.Namespace) | uniq -}}
{{- $selector := .Values.webhook.namespaceSelector -}}
{{- if $selector.matchLabels }}
matchLabels:
  {{- toYaml $selector.matchLabels | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- toYaml $excluded | nindent 6 }}
  - key: digestguard.io/exclude
    operator: NotIn
    values:
      - "true"
  {{- with $selector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* One webhook entry; called with (dict "root" $ "handler" $handler "mutating" bool). */}}
{{- define "digestguard.webhook" -}}
{{- $root := .root -}}
{{- $rule := merge (dict "scope" "Namespaced") .handler.rule -}}
- name: {{ .handler.id }}.digestguard.io
  admissionReviewVersions: [v1]
  clientConfig:
    service:
      name: {{ include "digestguard.fullname" $root }}
      namespace: {{ $root.Release.Namespace }}
      path: /{{ .handler.id }}
      port: {{ $root.Values.service.port }}
    {{- if eq $root.Values.tls.mode "existingSecret" }}
    caBundle: {{ $root.Values.tls.existingSecret.caBundle | b64enc }}
    {{- end }}
  rules:
    {{- list $rule | toYaml | nindent 4 }}
  failurePolicy: {{ $root.Values.webhook.failurePolicy }}
  matchPolicy: Equivalent
  sideEffects: None
  timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
  namespaceSelector:
    {{- include "digestguard.namespaceSelector" $root | fromYaml | toYaml | nindent 4 }}
  {{- if .mutating }}
  reinvocationPolicy: IfNeeded
  {{- end }}
{{- end -}}

{{/* Seconds in a duration of the form resolver.deadline accepts (`5s`, `2.5s`, `500ms`). */}}
{{- define "digestguard.deadlineSeconds" -}}
{{- $deadline := .Values.resolver.deadline -}}
{{- if hasSuffix "ms" $deadline -}}
{{- divf (trimSuffix "ms" $deadline | float64) 1000 -}}
{{- else -}}
{{- trimSuffix "s" $deadline | float64 -}}
{{- end -}}
{{- end -}}

{{/* Combinations the schema cannot express; each fails with the reason. */}}
{{- define "digestguard.validate" -}}
{{- if not .Values.image.repository -}}
{{- fail "image.repository is required: no digestguard image is published. Build it with `make image` in the digestguard repository, copy it to a registry your nodes pull from (e.g. ECR) and set image.repository (and image.digest). With no replica running, the apiserver rejects every pod these webhooks see (failurePolicy Fail)" -}}
{{- end -}}
{{- $tls := .Values.tls -}}
{{- if and (eq $tls.mode "certManager") (not $tls.certManager.createIssuer) (not $tls.certManager.issuerRef.name) -}}
{{- fail "tls.mode=certManager needs an issuer: set tls.certManager.createIssuer=true, or tls.certManager.issuerRef.name to an existing Issuer/ClusterIssuer" -}}
{{- end -}}
{{- if eq $tls.mode "existingSecret" -}}
{{- if not $tls.existingSecret.name -}}
{{- fail "tls.mode=existingSecret needs tls.existingSecret.name: a kubernetes.io/tls Secret in the release namespace" -}}
{{- end -}}
{{- if not (hasPrefix "-----BEGIN CERTIFICATE-----" (trim $tls.existingSecret.caBundle)) -}}
{{- fail "tls.mode=existingSecret needs tls.existingSecret.caBundle: the PEM (not base64) of the CA that signed the Secret's certificate; the apiserver trusts nothing else" -}}
{{- end -}}
{{- end -}}
{{- $deadline := include "digestguard.deadlineSeconds" . | float64 -}}
{{- if ge (addf $deadline 1) (float64 .Values.webhook.timeoutSeconds) -}}
{{- fail (printf "webhook.timeoutSeconds (%v) must exceed resolver.deadline (%s) plus 1s: the webhook answers within the deadline plus 1s, and the apiserver must not give up first" .Values.webhook.timeoutSeconds .Values.resolver.deadline) -}}
{{- end -}}
{{- if eq (int .Values.containerPorts.webhook) (int .Values.containerPorts.health) -}}
{{- fail "containerPorts.webhook and containerPorts.health must differ" -}}
{{- end -}}
{{- with .Values.registries.caBundle -}}
{{- if not (hasPrefix "-----BEGIN CERTIFICATE-----" (trim .)) -}}
{{- fail "registries.caBundle must be PEM (-----BEGIN CERTIFICATE-----…), not base64 or a file name: use --set-file registries.caBundle=ca.pem" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" -}}
{{- end -}}
{{- end -}}

{{/* `digestguard serve` flags (each also has a DIGESTGUARD_* variable; flags are explicit). */}}
{{- define "digestguard.args" -}}
- --port={{ .Values.containerPorts.webhook }}
- --health-port={{ .Values.containerPorts.health }}
{{- if eq .Values.tls.mode "selfManaged" }}
- --tls-mode=self-managed
- --tls-secret-name={{ include "digestguard.tlsSecretName" . }}
- --service-name={{ include "digestguard.fullname" . }}
- --mutating-webhook-configuration={{ include "digestguard.webhookConfigurationName" . }}
- --validating-webhook-configuration={{ include "digestguard.webhookConfigurationName" . }}
- --tls-dir={{ include "digestguard.selfManagedTlsDir" . }}
{{- else }}
- --tls-mode=files
- --tls-cert-file={{ include "digestguard.tlsMountPath" . }}/tls.crt
- --tls-key-file={{ include "digestguard.tlsMountPath" . }}/tls.key
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.minReplicas) 2) }}
{{- fail "autoscaling.minReplicas must be at least 2: the webhook answers every pod creation (failurePolicy Fail), and with one replica a drain or a rollout leaves none; the PodDisruptionBudget keeps one of two" -}}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%v) must be at least autoscaling.minReplicas (%v)" .Values.autoscaling.maxReplicas .Values.autoscaling.minReplicas) -}}
{{- end }}
- --resolve-deadline={{ .Values.resolver.deadline }}
- --cache-ttl={{ .Values.resolver.cacheTTL }}
- --negative-cache-ttl={{ .Values.resolver.negativeCacheTTL }}
- --mutability-cache-ttl={{ .Values.resolver.mutabilityCacheTTL }}
- --cache-max-entries={{ int64 .Values.resolver.cacheMaxEntries }}
- --registry-workers={{ int64 .Values.resolver.registryWorkers }}
- --max-inflight={{ int64 .Values.server.maxInflight }}
- --max-deciding={{ int64 .Values.server.maxDeciding }}
- --max-connections={{ int64 .Values.server.maxConnections }}
- --max-body-bytes={{ int64 .Values.server.maxBodyBytes }}
- --shed-lag={{ .Values.server.shedLag }}
- --shutdown-delay={{ .Values.server.shutdownDelay }}
{{- if .Values.audit.enabled }}
- --audit-interval={{ .Values.audit.interval }}
- --audit-lease-name={{ include "digestguard.auditLeaseName" . }}
- --audit-lifecycle-preview={{ .Values.audit.lifecyclePreview }}
{{- else }}
- --audit-interval=0
{{- end }}
{{- with .Values.registries.insecure }}
- --insecure-registries={{ join "," . }}
{{- end }}
{{- if .Values.registries.caBundle }}
- --registry-ca-file={{ include "digestguard.registryCaMountPath" . }}/ca.crt
{{- end }}
{{- with .Values.registries.pullSecrets }}
{{- if has (include "digestguard.tlsSecretName" $) . }}
{{- fail (printf "registries.pullSecrets names %s, the webhook's TLS Secret: name dockerconfigjson Secrets only" (include "digestguard.tlsSecretName" $)) -}}
{{- end }}
- --registry-pull-secrets={{ join "," . }}
- --registry-pull-secrets-interval={{ $.Values.registries.pullSecretsInterval }}
{{- end }}
{{- if .Values.registries.podPullSecrets }}
- --pod-pull-secrets=true
{{- end }}
- --log-level={{ .Values.logLevel }}
{{- with .Values.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}
