"""``python -m cryoralign_plugin.engine.synthetic``: see :mod:`.cli`."""
from .cli import main

main()
