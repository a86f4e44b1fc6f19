"""The package version and the versions of everything that can change a model's outputs.

Usage::

    from imgclf._version import __version__, versions
"""

from __future__ import annotations

import platform
import sys

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """Versions of everything that can change a model's outputs (imports torch, numpy and Pillow)."""
    import numpy as np
    import PIL
    import torch

    return {
        "imgclf": __version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": sys.platform,
    }
