"""The streaming worker: the Faust app, its agents and stages, metrics and policy."""
