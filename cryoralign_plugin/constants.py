"""Names shared by the plugin's protocols, conversion and Plugin class."""
# The files of the engine's output dir are named by the engine module that writes and reads them.
from .engine.outputs import CHECKPOINT_GLOB, CLASSES_MRCS, CLASSES_STAR, HISTORY_JSON, PARTICLES_STAR  # noqa: F401

# Scipion config variable: path of the engine launcher.
CRYORALIGN_ENGINE = "CRYORALIGN_ENGINE"
ENGINE_SCRIPT = "cryoralign-engine"

# Engine sub-commands.
RFA = "rfa"
MRA = "mra"

# Files in a run's extra dir: the engine input and the engine output dir.
INPUT_DIR = "input"
INPUT_STAR = "particles.star"
REFERENCES_STACK = "references.mrcs"
ENGINE_DIR = "engine"

# STAR table names.
TABLE_PARTICLES = "particles"
TABLE_OPTICS = "optics"

# Prefix of the extra attributes stored on output particles and classes.
ATTR_PREFIX = "_cryoralign"

# CTF correction choices of the forms (EnumParam order) and the engine's --ctf value of each;
# None (Automatic) omits the flag: the engine corrects when the input has CTF columns.
CTF_AUTO, CTF_WIENER, CTF_FLIP, CTF_NONE = range(4)
CTF_CHOICES = ['Automatic', 'Wiener', 'Phase flip only', 'None']
CTF_ENGINE_MODES = [None, 'wiener', 'flip', 'none']
