"""Agent authentication: our own short-lived tokens for on-device agents.

Agents never hold the device's upstream password. They get Ed25519-signed
access tokens (minutes) and rotating refresh tokens (days), either from an
upstream login or from an API key. Nothing secret is stored in the clear:
tokens and keys are kept as hashes, the signing key is sealed to this
device. See docs/security.md.
"""
