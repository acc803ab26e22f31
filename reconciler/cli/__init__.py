"""`reconciler ...` and its read models; nothing below this package imports it."""
