"""Scipion protocols of the plugin (Domain discovers the classes imported here)."""
from .protocol_align2d import CryoralignProtAlign2D
from .protocol_classify2d import CryoralignProtClassify2D
from .protocol_stream2d import CryoralignProtStream2D
