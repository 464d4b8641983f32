from tests.harness import docker_compose_file, kafka_bootstrap, settings, worker  # noqa: F401
