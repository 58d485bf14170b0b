"""The handheld page's static files (a package so they are installed with it)."""
