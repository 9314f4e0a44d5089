{{/*
The five services: values key, config section (TOLLGATE_<SECTION>__...), ports, and the services
each one calls (the architecture: the NetworkPolicies allow exactly these calls).
*/}}
{{- define "tollgate.serviceTable" -}}
router:
  key: router
  section: ROUTER
  grpcPort: 50051
  metricsPort: 9101
  calls: [token-cache, casebank, cost-tracker, provider-adapter]
token-cache:
  key: tokenCache
  section: TOKEN_CACHE
  grpcPort: 50052
  metricsPort: 9102
  calls: []
casebank:
  key: casebank
  section: CASEBANK
  grpcPort: 50053
  metricsPort: 9103
  calls: [provider-adapter]
cost-tracker:
  key: costTracker
  section: COST_TRACKER
  grpcPort: 50054
  metricsPort: 9104
  calls: []
provider-adapter:
  key: providerAdapter
  section: PROVIDER_ADAPTER
  grpcPort: 50055
  metricsPort: 9105
  calls: []
{{- end }}

{{- define "tollgate.services" -}}
{{- fromYaml (include "tollgate.serviceTable" .) | toJson -}}
{{- end }}

{{/* The tracks to render: stable always, canary when enabled. */}}
{{- define "tollgate.tracks" -}}
{{- if .Values.canary.enabled }}["stable","canary"]{{ else }}["stable"]{{ end -}}
{{- end }}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a service's objects: <fullname>-<service>[-canary]. Call with (list $ service track). */}}
{{- define "tollgate.componentName" -}}
{{- $root := index . 0 }}{{ $svc := index . 1 }}{{ $track := index . 2 -}}
{{- include "tollgate.fullname" $root }}-{{ $svc }}{{ if eq $track "canary" }}-canary{{ end }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{/* Pods of one service, any track. Call with (list $ service). */}}
{{- define "tollgate.componentSelector" -}}
{{- $root := index . 0 }}{{ $svc := index . 1 -}}
app.kubernetes.io/name: {{ include "tollgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $svc }}
{{- end }}

{{/* Pods of one service and track. Call with (list $ service track). */}}
{{- define "tollgate.selector" -}}
{{- $root := index . 0 }}{{ $svc := index . 1 }}{{ $track := index . 2 -}}
{{ include "tollgate.componentSelector" (list $root $svc) }}
track: {{ $track }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of a track. Call with (list $ track). */}}
{{- define "tollgate.image" -}}
{{- $root := index . 0 }}{{ $track := index . 1 -}}
{{- if eq $track "canary" -}}
{{ default $root.Values.image.repository $root.Values.canary.image.repository }}:{{ required "canary.image.tag is required when canary.enabled" $root.Values.canary.image.tag }}
{{- else -}}
{{ $root.Values.image.repository }}:{{ default $root.Chart.AppVersion $root.Values.image.tag }}
{{- end }}
{{- end }}

{{/* The address a pod of `track` uses for peer `service`. Call with (list $ service track). */}}
{{- define "tollgate.peerUrl" -}}
{{- $root := index . 0 }}{{ $svc := index . 1 }}{{ $track := index . 2 -}}
{{- $table := include "tollgate.services" $root | fromJson -}}
{{- $name := include "tollgate.componentName" (list $root $svc $track) -}}
{{- if eq $root.Values.peers.discovery "headless" }}{{ $name = printf "%s-headless" $name }}{{ end -}}
http://{{ $name }}.{{ $root.Release.Namespace }}.svc:{{ (index $table $svc).grpcPort }}
{{- end }}
