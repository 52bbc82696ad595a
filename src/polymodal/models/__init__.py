"""Task models composed from :mod:`polymodal.modules` (import the submodules you need)."""
