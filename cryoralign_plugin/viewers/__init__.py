"""Scipion viewers of the plugin (Domain discovers the classes imported here)."""
from .viewer_cryoralign import CryoralignViewer
