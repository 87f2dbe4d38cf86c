"""Development tooling: the local stack behind ``make run`` and the private
podman engine that it and the tests use. Not needed on a device."""
