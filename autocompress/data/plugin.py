"""Load a user's `package.module:function` plugin (a metric or a dataset reader).

Only modules that are already importable are loaded (installed in the image or on PYTHONPATH);
we never add a data folder to `sys.path`, so a dataset cannot smuggle in code of its own.
"""
from __future__ import annotations

import importlib
import re

from ..errors import ConfigError

_SPEC_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_plugin(spec: str, what: str):
    """Import `package.module:function` and return the callable; ConfigError says what is wrong."""
    if not isinstance(spec, str) or not _SPEC_RE.match(spec):
        raise ConfigError(f"{what} plugin {spec!r} is not of the form 'package.module:function'")
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what} plugin {spec!r}: cannot import module {module_name!r} ({err}). "
                          "Install the package in the image or put it on PYTHONPATH.") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{what} plugin {spec!r}: module {module_name!r} has no function {func_name!r}")
    return func
