"""Make a SQLite file usable by the pinned Optuna 2.10 under SQLAlchemy 2.

Optuna 2.10 (pinned: hydra-optuna-sweeper 1.3.0 needs optuna < 3) stamps a new database's schema version
through Alembic on a connection it never commits. SQLAlchemy 2 no longer autocommits, so the stamp is
lost, ``RDBStorage`` fails its own ``assert version is not None`` and the open transaction leaves the file
locked ("database is locked") for the next connection. Stamping the schema here, in a committed
transaction, before Optuna opens the file avoids both; Optuna then finds the database initialised and
skips its own stamp. Harmless under SQLAlchemy 1.4 and for files Optuna already initialised.
"""

from __future__ import annotations

from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


def prepare_sqlite(url: str) -> None:
    """Create the parent directory, Optuna's tables and the Alembic stamp of the SQLite database ``url``."""
    if not url.startswith(SQLITE_PREFIX):
        return  # another database server: Optuna's own initialisation applies
    Path(url[len(SQLITE_PREFIX) :]).parent.mkdir(parents=True, exist_ok=True)
    import logging

    import alembic.migration
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _VersionManager

    logging.getLogger("alembic").setLevel(logging.WARNING)  # as Optuna does: no schema chatter in every log
    engine = sqlalchemy.create_engine(url)
    try:
        models.BaseModel.metadata.create_all(engine)
        with engine.begin() as connection:
            context = alembic.migration.MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                # Optuna's own script directory and head revision, exactly what it would have stamped.
                manager = _VersionManager.__new__(_VersionManager)
                manager.url = url
                script = manager._create_alembic_script()
                context.stamp(script, script.get_current_head())
    finally:
        engine.dispose()
