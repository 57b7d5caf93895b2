"""Incident storage: SQLAlchemy 2.0 models, Alembic migrations, and the incident store."""
