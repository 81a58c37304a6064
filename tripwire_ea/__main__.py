"""``python -m tripwire_ea``: the same as the ``tripwire-ea`` command."""

from tripwire_ea.cli import main

main()
