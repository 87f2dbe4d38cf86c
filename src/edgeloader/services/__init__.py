"""The flows with all their rules: session, load, upload, unlock, cache.

They know nothing of HTTP.
"""
