"""The embedded demo: a small digit classifier, benign and adversarial traffic."""
