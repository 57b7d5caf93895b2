"""Feature-squeezing detection: pure computation, usable from a notebook."""
