#!/bin/sh
# Prints deploy/prometheus/alerts.yaml as a PrometheusRule: its groups, comments and all,
# under spec. `make prometheus-rule` writes it to prometheusrule.yaml beside this script.
set -eu
rules="$(dirname "$0")/../../../prometheus/alerts.yaml"
cat <<'HEAD'
# Made from deploy/prometheus/alerts.yaml by `make prometheus-rule` (build-rule.sh): edit that
# file, never this one. tests/test_deploy.py fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: videodb-token-broker
spec:
HEAD
# the file's own header comment stays behind; every other line moves under spec
sed -e '1,/^groups:/{/^#/d;}' -e 's/^\(.\)/  \1/' "$rules"
