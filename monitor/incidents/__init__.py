"""The incident history: storage, alerts, postmortem reports and the HTTP API."""
