"""The streaming flows: load, upload and unlock. They know nothing of HTTP."""
