"""The one harness for tests, ``make run`` and the service benchmarks: it
starts and stops the real components on loopback and writes their data.

- ``net``: free ports, serving an aiohttp app, waiting for a condition;
- ``s3``: moto's S3 server and clients for it;
- ``resource_api``: the reference Resource API, its users and ``cdn.yaml``;
- ``loader``: the loader;
- ``processes``: a component as its own process (the benchmarks);
- the engines are ``tests.support.podman.PodmanService`` and
  ``tests.support.docker.DockerService`` (``tests.support.engines``).

The submodules are imported one by one: ``python -m
tests.support.harness.s3`` must not find its own module already imported.
"""
