"""``python -m cryoralign_plugin.engine.synthetic``: see :mod:`.cli`."""
from .cli import main

if __name__ == "__main__":   # importing it (as a walk over the engine's modules does) runs nothing
    main()
