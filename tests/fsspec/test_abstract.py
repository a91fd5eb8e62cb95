"""fsspec's own abstract test suite (copy, get, put, open, pipe), run against the azureml protocol on Azurite.

Wired as fsspec wires its memory and local file systems: ``fs``, ``fs_path`` and ``fs_join`` are overridden,
everything else is fsspec's. Empty folders are supported (a folder is a zero-length blob with
``hdi_isfolder=true`` metadata, as ADLS Gen2 shows them), so ``supports_empty_directories`` keeps its default.
Nothing is skipped.
"""

from __future__ import annotations

import uuid

import pytest
from fsspec.tests import abstract

DATASTORE = "fsspec_data"  # the datastore conftest.py creates

pytestmark = pytest.mark.azurite


class AzureMLFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, azureml_fs):
        azureml_fs.invalidate_cache()
        return azureml_fs

    @pytest.fixture
    def fs_join(self):
        return lambda *parts: "/".join(parts)

    @pytest.fixture
    def fs_path(self):
        return f"datastores/{DATASTORE}/paths/abstract-{uuid.uuid4().hex[:12]}"


class TestAzureMLCopy(abstract.AbstractCopyTests, AzureMLFixtures):
    pass


class TestAzureMLGet(abstract.AbstractGetTests, AzureMLFixtures):
    pass


class TestAzureMLPut(abstract.AbstractPutTests, AzureMLFixtures):
    pass


class TestAzureMLOpen(abstract.AbstractOpenTests, AzureMLFixtures):
    pass


class TestAzureMLPipe(abstract.AbstractPipeTests, AzureMLFixtures):
    pass
