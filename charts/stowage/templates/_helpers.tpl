{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "stowage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: "stowage" for a release named stowage, else "<release>-stowage".
*/}}
{{- define "stowage.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels on every object of the release (without a component).
*/}}
{{- define "stowage.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "stowage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stowage
{{- end }}

{{/*
Labels of the operator's objects.
*/}}
{{- define "stowage.labels" -}}
{{ include "stowage.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
Labels selecting the operator's pods.
*/}}
{{- define "stowage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stowage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "stowage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stowage.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest, else repository:tag (tag defaults to appVersion).
*/}}
{{- define "stowage.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The runner image of backup Jobs: runner.image, else the operator image.
*/}}
{{- define "stowage.runnerImage" -}}
{{- default (include "stowage.image" .) .Values.runner.image }}
{{- end }}

{{/*
Namespaces that get the runner ServiceAccount: watchNamespaces + runner.serviceAccount.namespaces,
deduplicated, sorted.
*/}}
{{- define "stowage.runnerNamespaces" -}}
{{- $all := concat .Values.watchNamespaces .Values.runner.serviceAccount.namespaces | uniq | sortAlpha }}
{{- toJson $all }}
{{- end }}

{{/*
Fail on combinations the schema cannot express.
*/}}
{{- define "stowage.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile and start duplicate backup Jobs" }}
{{- end }}
{{- end }}

{{/*
What the operator may do in the namespaces it watches. No Secrets: backup pods get secret
values through secretKeyRef, the operator never reads them.
*/}}
{{- define "stowage.rules" -}}
{{- /* Keep in step with deploy/rbac/operator.yaml (a test compares them). */}}
- apiGroups: ["stowage.dev"]
  resources: ["backuptargets", "backupschedules", "backuprestores"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["stowage.dev"]
  resources: ["backuptargets/status", "backupschedules/status", "backuprestores/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["stowage.dev"]
  resources: ["backuptargets/finalizers", "backupschedules/finalizers", "backuprestores/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "stowage.clusterRules" -}}
{{- /* Keep in step with the stowage-controller-cluster ClusterRole of deploy/rbac/operator.yaml (a test compares them). */}}
- apiGroups: ["stowage.dev"]
  resources: ["backupplugins"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["stowage.dev"]
  resources: ["backupplugins/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["create"]
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  resourceNames: [{{ include "stowage.fullname" . | quote }}]
  verbs: ["get", "patch", "update"]
{{- end }}

{{/*
The alerting rules of the PrometheusRule (a list of Prometheus rules). Kept in a helper so
the chart test can run them through promtool.
*/}}
{{- define "stowage.alertRules" -}}
{{- $r := .Values.metrics.prometheusRule }}
{{- if $r.backupFailed.enabled }}
- alert: StowageBackupFailed
  # A failed run within the window; the second half catches a target's first failure (its
  # counter series appears with the value 1, which increase() cannot see).
  expr: |-
    (increase(stowage_backup_runs_total{result="failed"}[{{ $r.backupFailed.window }}]) > 0)
    or
    (stowage_backup_runs_total{result="failed"} unless stowage_backup_runs_total{result="failed"} offset {{ $r.backupFailed.window }})
  labels:
    severity: {{ $r.backupFailed.severity }}
    {{- with $r.alertLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    summary: "Backup of {{`{{ $labels.namespace }}/{{ $labels.target }}`}} failed"
    description: "A {{`{{ $labels.plugin }}`}} backup run of BackupTarget {{`{{ $labels.namespace }}/{{ $labels.target }}`}} failed in the last {{ $r.backupFailed.window }}. See `kubectl -n {{`{{ $labels.namespace }}`}} describe backuptarget {{`{{ $labels.target }}`}}` (status.lastFailure and events)."
{{- end }}
{{- if $r.noRecentSuccess.enabled }}
- alert: StowageNoRecentBackup
  expr: (time() - stowage_backup_last_success_timestamp_seconds) > {{ mul (int $r.noRecentSuccess.hours) 3600 }}
  labels:
    severity: {{ $r.noRecentSuccess.severity }}
    {{- with $r.alertLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    summary: "No successful backup of {{`{{ $labels.namespace }}/{{ $labels.target }}`}} for {{ $r.noRecentSuccess.hours }}h"
    description: "The last successful backup of BackupTarget {{`{{ $labels.namespace }}/{{ $labels.target }}`}} finished {{`{{ $value | humanizeDuration }}`}} ago, more than {{ $r.noRecentSuccess.hours }} hours."
{{- end }}
{{- if $r.scheduleNotReady.enabled }}
- alert: StowageScheduleNotReady
  # The schedule's next tick is long past: the operator stopped scheduling it.
  expr: (time() - stowage_schedule_next_run_timestamp_seconds) > {{ mul (int $r.scheduleNotReady.overdueMinutes) 60 }}
  labels:
    severity: {{ $r.scheduleNotReady.severity }}
    {{- with $r.alertLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    summary: "BackupSchedule {{`{{ $labels.namespace }}/{{ $labels.schedule }}`}} is not running"
    description: "The next run of BackupSchedule {{`{{ $labels.namespace }}/{{ $labels.schedule }}`}} was due {{`{{ $value | humanizeDuration }}`}} ago. Check its Ready condition (`kubectl -n {{`{{ $labels.namespace }}`}} get backupschedule {{`{{ $labels.schedule }}`}} -o yaml`) and the operator's logs."
- alert: StowageReconcileErrors
  expr: increase(stowage_reconcile_errors_total[15m]) > 0
  for: 15m
  labels:
    severity: {{ $r.scheduleNotReady.severity }}
    {{- with $r.alertLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    summary: "stowage's {{`{{ $labels.controller }}`}} controller keeps failing ({{`{{ $labels.error }}`}})"
    description: "Reconciles of the {{`{{ $labels.controller }}`}} controller have failed with {{`{{ $labels.error }}`}} errors for 15 minutes; schedules and targets may not be processed. See the operator's logs."
{{- end }}
{{- end }}
