"""The optional ``deploy`` extra: import ``onnx``, ``onnxscript`` or ``onnxruntime`` or say how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install -e .[deploy]"  # from the repository root; installs onnx, onnxscript and onnxruntime


class MissingExtra(ImportError):
    """An optional package is not installed; the message names it and the install command."""


def import_extra(name: str) -> ModuleType:
    """``import name``, or an ImportError of one line naming the missing package and the install command.

    The ONNX packages are an optional extra (``pyproject.toml``: ``deploy``), so that the course installs
    without them; only exporting and running exported models need them.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise MissingExtra(f"ONNX export and ONNX Runtime need the package {name!r}, which is not installed; "
                          f"install the deploy extra: {INSTALL_HINT}") from error
