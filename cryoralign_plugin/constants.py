"""Names shared by the plugin's protocols, conversion and Plugin class."""

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

# Files the engine writes in its output dir.
OUT_PARTICLES = "particles.star"
OUT_CLASSES_STAR = "classes.star"
OUT_CLASSES_STACK = "classes.mrcs"
OUT_HISTORY = "history.json"
CHECKPOINT_GLOB = "iter_[0-9][0-9][0-9]"

# STAR table names.
TABLE_PARTICLES = "particles"
TABLE_OPTICS = "optics"
TABLE_CLASSES = "classes"

# Prefix of the extra attributes stored on output particles and classes.
ATTR_PREFIX = "_cryoralign"
