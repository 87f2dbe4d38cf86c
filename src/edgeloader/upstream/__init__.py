"""Clients of the systems the loader depends on: the Resource API, the CDN
and the container engine. Each maps its library's errors to ours."""
