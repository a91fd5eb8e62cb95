"""The azureml protocol is found through fsspec's entry point, and only loads when used."""

from __future__ import annotations

import subprocess
import sys


def test_fsspec_finds_this_package_class_for_azureml():
    import fsspec
    from aml_identity.fsspec import AzureMLFileSystem

    assert fsspec.get_filesystem_class("azureml") is AzureMLFileSystem


def test_the_entry_point_loads_nothing_until_the_protocol_is_used():
    code = (
        "import sys, fsspec; fsspec.filesystem('memory').pipe('/x', b'1');"
        "assert 'aml_identity' not in sys.modules, 'imported early';"
        "import aml_identity; assert 'fsspec' in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    base = subprocess.run(
        [sys.executable, "-c", "import sys, aml_identity; print('fsspec' in sys.modules)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert base.stdout.strip() == "False"


def test_without_fsspec_the_module_names_the_extra():
    code = (
        "import sys; sys.modules['fsspec'] = None\n"
        "try:\n    import aml_identity.fsspec\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "pip install 'aml-identity[fsspec]'" in out.stdout
