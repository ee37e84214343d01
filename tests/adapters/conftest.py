"""The conformance suite needs the real agent image built by the integration fixtures."""

from tests.integration.conftest import agent_image, base_image, docker_client

__all__ = ["agent_image", "base_image", "docker_client"]
