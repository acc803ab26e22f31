"""The reconciler daemon: plan (pure), observe, apply, and the loop."""
