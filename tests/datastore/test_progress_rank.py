"""On a shared terminal, one progress bar per node: only local rank 0 draws it (``JobEnvironment.local_rank``)."""

from __future__ import annotations

import sys

import pytest

from aml_identity.datastore import download

pytestmark = pytest.mark.azurite


@pytest.mark.usefixtures("storage_job")
@pytest.mark.parametrize(("local_rank", "bar"), [("0", True), ("1", False), (None, True)])
def test_only_local_rank_zero_draws_the_bar(store, tmp_path, monkeypatch, capsys, local_rank, bar):  # noqa: PLR0917
    store.seed({"a.bin": b"x" * 4096})
    if local_rank is not None:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal
    download(store.uri(), tmp_path / "out")
    drawn = "download" in capsys.readouterr().err
    assert drawn is bar
