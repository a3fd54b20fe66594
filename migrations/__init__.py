"""Alembic migrations of culturectl (a package so the installed service finds them with importlib)."""
