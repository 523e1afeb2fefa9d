"""Peers the integration tests talk to over real HTTP on loopback."""

from collections.abc import Iterator

import pytest

from tests.support import ecr_emulator


@pytest.fixture(scope="session")
def moto_server() -> Iterator[ecr_emulator.MotoServer]:
    """One moto server subprocess for the session; tests use repositories of their own."""
    with ecr_emulator.moto_server() as server:
        yield server
