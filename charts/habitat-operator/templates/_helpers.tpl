{{- define "habitat-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "habitat-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "habitat-operator.labels" -}}
{{ include "habitat-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "habitat-operator.serviceAccountName" -}}
{{- default (include "habitat-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "habitat-operator.claimName" -}}
{{- default (printf "%s-backups" (include "habitat-operator.fullname" .)) .Values.backups.persistence.existingClaim -}}
{{- end -}}
