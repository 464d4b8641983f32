from tests.harness import docker_compose_file, kafka_bootstrap, settings, sink, worker  # noqa: F401
