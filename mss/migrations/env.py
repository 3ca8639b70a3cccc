"""Alembic environment: runs on the engine handed in by ``mss.db.migrate``."""

from alembic import context
from sqlmodel import SQLModel

import mss.models  # noqa: F401  (registers every table on SQLModel.metadata)

target_metadata = SQLModel.metadata


def run_migrations() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        raise RuntimeError("mss migrations run through mss.db.migrate(engine)")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
