"""Building a gin configurable with gin's errors turned into one ConfigError."""

from __future__ import annotations

import re

from ptransfer.core.errors import ConfigError


def build_configurable(cls, what: str):
    """`cls()` filled in by gin, with gin's errors turned into one ConfigError."""
    try:
        return cls()
    except TypeError as e:
        msg = re.sub(r"\s+", " ", str(e)).strip()
        m = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: (.*?)(?: No values| In call|$)", msg)
        missing = m.group(1) if m else msg
        raise ConfigError(f"{what}: not configured: {missing}. Bind them in a gin file or with "
                          "--gin.<Configurable>.<param>=... (see gin_configs/runs/).") from None
