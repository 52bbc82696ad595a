"""polymodal: multimodal learning that works offline, installs in one command and scores like the papers."""

__version__ = "0.1.0"

from polymodal.errors import PolymodalError  # noqa: E402

__all__ = ["PolymodalError", "__version__"]
