{{- define "contextlm.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "contextlm.labels" -}}
app.kubernetes.io/name: contextlm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "contextlm.selectorLabels" -}}
app.kubernetes.io/name: contextlm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "contextlm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "contextlm.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}

{{/* The rules the operator needs, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "contextlm.rules" -}}
- apiGroups: ["contextlm.io"]
  resources: [corpora, retrievalstacks, alignedmodels, contextualdeployments, alignmentruns]
  verbs: [get, list, watch, patch, update, create]
- apiGroups: ["contextlm.io"]
  resources: [corpora/status, retrievalstacks/status, alignedmodels/status, contextualdeployments/status, alignmentruns/status]
  verbs: [get, patch, update]
- apiGroups: ["contextlm.io"]
  resources: [corpora/finalizers, retrievalstacks/finalizers, alignedmodels/finalizers, contextualdeployments/finalizers, alignmentruns/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: ["events.k8s.io"]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: ["apps"]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["batch"]
  resources: [jobs, cronjobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["autoscaling"]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["kopf.dev"]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
