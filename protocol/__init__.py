"""The wire contract of Tripwire: every message on every wire, its codecs and its signatures.

Pure: no networking, no clock, no imports of ours. Time comes in as arguments.
"""

from __future__ import annotations

from protocol import errors
from protocol.errors import *  # noqa: F403  (the error tree is part of the public surface)

__all__ = list(errors.__all__)
