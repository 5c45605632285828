"""Shared test fixtures."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def assets_dir():
    """The offline asset cache (real SmolLM2 GGUF and corpora), fetched if needed."""
    from ptransfer.core import assets

    return assets.fetch()


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Gin bindings parsed by one test (e.g. MESH_MODEL=4) must not leak into
    configurables another test constructs directly."""
    yield
    import gin

    gin.clear_config()
