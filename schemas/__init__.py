"""Wire contracts of advmon."""
