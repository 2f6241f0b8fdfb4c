{{/* The release's name for its objects: the release name, or <release>-downsync. */}}
{{- define "downsync.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "downsync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "downsync.labels" -}}
{{ include "downsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "downsync.pluginsConfigMap" -}}
{{- .Values.plugins.configMap.name | default (printf "%s-plugins" (include "downsync.fullname" .)) -}}
{{- end -}}

{{/* The API group of a resource entry: "" for v1, "apps" for apps/v1. */}}
{{- define "downsync.group" -}}
{{- if contains "/" .apiVersion -}}{{- regexReplaceAll "/[^/]*$" .apiVersion "" -}}{{- end -}}
{{- end -}}

{{/* The resource (plural) of a resource entry: its `plural`, or a guess from its kind. */}}
{{- define "downsync.plural" -}}
{{- $k := lower .kind -}}
{{- if .plural -}}{{ .plural }}
{{- else if or (hasSuffix "s" $k) (hasSuffix "x" $k) (hasSuffix "ch" $k) (hasSuffix "sh" $k) -}}{{ $k }}es
{{- else if regexMatch "[^aeiou]y$" $k -}}{{ trimSuffix "y" $k }}ies
{{- else -}}{{ $k }}s
{{- end -}}
{{- end -}}

{{/*
The synced resources grouped by API group, as YAML: {"<group>": [plural, ...]}, groups and
resources in the order of config.resources.
*/}}
{{- define "downsync.resourcesByGroup" -}}
{{- $groups := dict -}}
{{- range .Values.config.resources -}}
{{- $g := include "downsync.group" . -}}
{{- $_ := set $groups $g (append (get $groups $g | default list) (include "downsync.plural" .)) -}}
{{- end -}}
{{- toYaml $groups -}}
{{- end -}}

{{/* The RunConfig: config with the settings the chart owns. */}}
{{- define "downsync.runConfig" -}}
{{- $c := deepCopy .Values.config -}}
{{- $resources := list -}}
{{- range .Values.config.resources -}}
{{- $resources = append $resources (omit . "plural") -}}
{{- end -}}
{{- $_ := set $c "resources" $resources -}}
{{- $_ = set $c "upstream" (dict "kubeconfig" "/etc/downsync/upstream/kubeconfig") -}}
{{- $_ = set $c "pluginsDir" "/plugins" -}}
{{- $_ = set $c "metricsAddr" (printf "0.0.0.0:%v" .Values.endpoints.port) -}}
{{- /* The registry files the chart mounts; a key under /etc/downsync/keys needs its Secret. */ -}}
{{- $registry := deepCopy ($c.registry | default dict) -}}
{{- if .Values.registry.caSecret -}}
{{- $_ = set $registry "caFile" "/etc/downsync/registry-ca/ca.crt" -}}
{{- end -}}
{{- if $registry -}}
{{- $_ = set $c "registry" $registry -}}
{{- end -}}
{{- range $name, $p := $c.plugins -}}
{{- range ($p.keys | default list) -}}
{{- if and (hasPrefix "/etc/downsync/keys/" .) (not $.Values.pluginKeys.secret) -}}
{{- fail (printf "config.plugins.%s.keys names %s: set pluginKeys.secret to the Secret holding it" $name .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* HA is on in downsync when its config has an `ha` section. */ -}}
{{- if .Values.ha.enabled -}}
{{- $_ = set $c "ha" (merge (dict "shards" .Values.ha.shards) ($c.ha | default dict)) -}}
{{- else -}}
{{- $_ = unset $c "ha" -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}
