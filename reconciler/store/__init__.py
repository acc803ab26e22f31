"""The content-addressed artifact store and the bundle format."""
