"""Where the device secret comes from: an environment variable, or a file only its owner reads.

Never from the command line: argv is visible to every user of the machine (``ps``, the Task
Manager's command line column) and lands in shell histories.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from protocol.errors import ConfigError

__all__ = ["SECRET_ENV", "SECRET_FILE_ENV", "load_secret"]

SECRET_ENV = "TRIPWIRE_DEVICE_SECRET"
SECRET_FILE_ENV = "TRIPWIRE_DEVICE_SECRET_FILE"


def load_secret(secret_file: str | None, environ: Mapping[str, str] | None = None) -> bytes:
    """The device secret: from ``secret_file`` (or ``$TRIPWIRE_DEVICE_SECRET_FILE``) when one
    is named, else from ``$TRIPWIRE_DEVICE_SECRET``.

    The file must be readable by its owner only (mode 0600 or 0400) on POSIX systems: a secret
    other users can read is refused rather than used. On Windows, where modes do not describe
    the ACL, keep the file in your user profile. Surrounding whitespace (a trailing newline) is
    not part of the secret.

    Raises:
        ConfigError: no secret is configured, the file is missing or readable by others, or the
            secret is empty.
    """
    env = os.environ if environ is None else environ
    path = secret_file or env.get(SECRET_FILE_ENV)
    if path:
        return _from_file(Path(path))
    value = env.get(SECRET_ENV, "").strip()
    if not value:
        raise ConfigError(
            f"no device secret: set {SECRET_ENV}, or name a file readable only by you with "
            f"--secret-file or {SECRET_FILE_ENV}"
        )
    return value.encode()


def _from_file(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"the secret file {path} is not a regular file")
    if os.name != "nt" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the secret file {path} is accessible by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}` and start again"
        )
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise ConfigError(f"the secret file {path} is empty")
    return value.encode()
