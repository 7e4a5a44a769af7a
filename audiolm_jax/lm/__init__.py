"""Language models over codec tokens."""
