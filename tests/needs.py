"""Optional test dependencies: skipped on a developer's machine without them, a failure in CI.

The README's test command installs the ``test`` extra, which holds the CPU
PyTorch the oracle tests compare against.  Under CI (``CI`` set in the
environment, as ``.ci/run`` is run) a missing package is a broken install,
not a reason to skip: the comparisons would silently stop running.
"""

import importlib
import os

import pytest


def needs(module: str):
    """``import module``; when it is missing, skip the test, or fail it when ``CI`` is set."""
    if not os.environ.get("CI"):
        return pytest.importorskip(module)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"CI is set but {module} cannot be imported ({exc}); the test extra must install it", pytrace=False)
