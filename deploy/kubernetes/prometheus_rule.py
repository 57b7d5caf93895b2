"""Print base/prometheus-rule.yaml: deploy/prometheus-rules.yml as a PrometheusRule.

prometheus-operator loads rules from PrometheusRule objects, whose ``spec.groups`` has the
format of a Prometheus rule file's ``groups``. The groups are copied as text, comments
included, so the two files cannot differ:

    python deploy/kubernetes/prometheus_rule.py > deploy/kubernetes/base/prometheus-rule.yaml

tests/deploy/test_kubernetes.py checks that the committed file is this script's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

RULES = Path(__file__).resolve().parents[1] / "prometheus-rules.yml"

HEADER = """\
# Generated from deploy/prometheus-rules.yml by deploy/kubernetes/prometheus_rule.py; do not
# edit. advmon's own alert rules for prometheus-operator. A Prometheus loads only the
# PrometheusRules its ruleSelector matches (kube-prometheus-stack: the label
# release=<its release name>, see the example overlay).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: advmon
  labels:
    app.kubernetes.io/name: advmon
spec:
"""


def prometheus_rule(rules_text: str) -> str:
    """The PrometheusRule manifest whose ``spec`` holds the ``groups:`` of ``rules_text``."""
    lines = rules_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise ValueError(f"{RULES} has no top-level groups:")
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


if __name__ == "__main__":
    sys.stdout.write(prometheus_rule(RULES.read_text(encoding="utf-8")))
