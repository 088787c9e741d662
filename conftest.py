"""Repository-wide pytest setup: a private, headless Scipion environment.

Runs at import time of this file, before any test module imports pyworkflow/pwem (which read the
environment when first imported); ``cryoralign_plugin.scipion_env`` says what is set and why.
Importing it does not import pwem (the package loads its Plugin lazily).
"""
from cryoralign_plugin import scipion_env

scipion_env.setup()
