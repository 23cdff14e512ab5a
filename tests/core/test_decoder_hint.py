"""The package named when a decoder is missing: one that decodes that transfer syntax, is a
dependency of mamview, and is never the GPL pylibjpeg-libjpeg the project chose not to ship."""

import re
import tomllib
from pathlib import Path

import pytest
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, UID

from mamview.core.dicom.pixels import _install_hint

# the pydicom decoder plugin each hinted pip package provides
PLUGIN_OF = {"python-gdcm": "gdcm", "pylibjpeg-openjpeg": "pylibjpeg", "pylibjpeg-rle": "pylibjpeg"}
COMPRESSED = [uid for uid in _PIXEL_DATA_DECODERS if UID(uid).is_compressed]


def dependencies() -> set[str]:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}


@pytest.mark.parametrize("ts", COMPRESSED, ids=lambda u: UID(u).name)
def test_hint_names_a_shipped_package_that_decodes_the_syntax(ts):
    package = _install_hint(UID(ts))
    decoder = _PIXEL_DATA_DECODERS[ts][0]
    plugins = set(decoder._available) | set(decoder._unavailable)
    assert package in dependencies()
    assert PLUGIN_OF[package] in plugins
    assert package != "pylibjpeg-libjpeg"


@pytest.mark.parametrize("ts", [JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless])
def test_jpeg_family_points_at_gdcm(ts):
    assert _install_hint(ts) == "python-gdcm"
