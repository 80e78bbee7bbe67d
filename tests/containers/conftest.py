"""The container tests' session: podman with this run's own storage, and the images, built once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.containers.engine import Podman, engine_env, ensure_images
from tests.root import needs_root

# The one allowed skip (README, "Set-up"): without podman there is nothing to run the images with.
NO_PODMAN = "podman is not installed: the container tests build and run the images with it (README, 'Set-up')"


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if shutil.which("podman") is None:
        pytest.skip(NO_PODMAN)
    needs_root("the container tests: debootstrap, tmpfs volumes, pod network namespaces")
    env = dict(os.environ)
    own = "CONTAINERS_STORAGE_CONF" not in env  # .ci/run passes the storage it built the images in
    if own:
        env.update(engine_env(tmp_path_factory.mktemp("podman")))
    env["CONTAINER_ENGINE"] = "podman"
    engine = Podman(env)
    ensure_images(engine)
    yield engine
    if own:  # every test removed its own pods by id; the images are this session's alone
        engine("rmi", "--all", "--force", timeout=300, check=False)
