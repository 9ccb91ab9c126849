"""The software versions stored beside every stage's outputs, so a number can be traced to them.

Read from the installed packages' metadata, not by importing them: the torch-free stages (refine,
evaluate, gather) stay light.
"""

import platform
from importlib.metadata import version

from l2g_core import __version__


def software_versions():
    return {"l2g": __version__, "python": platform.python_version(), "torch": version("torch"),
            "torchvision": version("torchvision"), "numpy": version("numpy")}
