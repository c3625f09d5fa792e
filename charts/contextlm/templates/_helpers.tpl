{{- define "contextlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "contextlm.fullname" -}}
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

{{- define "contextlm.labels" -}}
app.kubernetes.io/name: {{ include "contextlm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: contextlm
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "contextlm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "contextlm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "contextlm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "contextlm.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}

{{- define "contextlm.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The metrics Service's name: the `job` label a ServiceMonitor gives the operator's series. */}}
{{- define "contextlm.metricsServiceName" -}}
{{- printf "%s-metrics" (include "contextlm.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Values the schema cannot express: refuse them at render time with a clear message. */}}
{{- define "contextlm.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without kopf peering every replica would reconcile the same resources at once" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- fail "podDisruptionBudget.minAvailable must be lower than replicaCount, or no node could ever be drained" }}
{{- end }}
{{- if and (eq .Values.store.kind "s3") (not .Values.store.secretName) }}
{{- fail "store.kind=s3 needs store.secretName (a Secret with accessKey and secretKey)" }}
{{- end }}
{{- end }}

{{/*
The namespaced permissions the operator needs, shared by the ClusterRole (cluster-wide
install) and the per-namespace Roles (watchNamespaces). This is the single definition:
every verb here is one the operator or kopf really calls (docs/sre.md, "Permissions").
No wildcards, no `update` on anything but the finalizers subresource, no `watch` on
children (kopf watches only contextlm resources), no `list`/`watch` on Secrets.
*/}}
{{- define "contextlm.rules" -}}
# contextlm resources: kopf lists and watches them and patches them (its finalizer and the
# last-handled-configuration annotation); reconcilers get a fresh copy before each
# reconcile and read the resources another one refers to (a RetrievalStack's Corpus).
- apiGroups: ["contextlm.io"]
  resources: [corpora, retrievalstacks, alignedmodels, contextualdeployments, alignmentruns]
  verbs: [get, list, watch, patch]
# An AlignmentRun is opened by the operator when a model's feedback trigger fires.
- apiGroups: ["contextlm.io"]
  resources: [alignmentruns]
  verbs: [create]
# Status is written only through the status subresource, as a merge patch.
- apiGroups: ["contextlm.io"]
  resources: [corpora/status, retrievalstacks/status, alignedmodels/status, contextualdeployments/status, alignmentruns/status]
  verbs: [patch]
# Children carry controller ownerReferences with blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin runs, setting that requires
# update on the owner's finalizers subresource.
- apiGroups: ["contextlm.io"]
  resources: [corpora/finalizers, retrievalstacks/finalizers, alignedmodels/finalizers, contextualdeployments/finalizers, alignmentruns/finalizers]
  verbs: [update]
# Warning Events on contextlm resources (the reconcilers' and kopf's); both post core/v1 Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Children, written by server-side apply (patch, and create when the object is absent),
# read back (get), listed by label to prune old revisions (list) and deleted when pruned
# or switched off (delete).
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [get, list, create, patch, delete]
- apiGroups: ["apps"]
  resources: [deployments]
  verbs: [get, list, create, patch, delete]
- apiGroups: ["batch"]
  resources: [jobs, cronjobs]
  verbs: [get, list, create, patch, delete]
- apiGroups: ["autoscaling"]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, create, patch, delete]
# Pods of Jobs and Deployments, listed by label for a Job's result (termination message)
# and the scheduler's reason when a pod cannot be placed. Never changed.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Secrets: only get, to report a Secret a resource names but that does not exist. Never
# listed or watched, so the operator never holds the data of Secrets it was not pointed at.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}

{{/* kopf peering (leader election): the replicas keep themselves alive on one object. */}}
{{- define "contextlm.peeringRules" -}}
# kopf watches the peering object and patches its own keep-alive into it; patch is
# limited to the chart's object, list/watch cannot be (kopf lists without a field selector).
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource }}]
  verbs: [list, watch]
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource }}]
  resourceNames: [contextlm]
  verbs: [patch]
{{- end }}

{{/* Cluster-scoped reads kopf needs in both install modes. */}}
{{- define "contextlm.discoveryRules" -}}
# kopf finds its resources through API discovery at start-up and then watches the CRDs, so
# that CRDs applied after the operator (a GitOps sync in any order) are still served.
- apiGroups: ["apiextensions.k8s.io"]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
