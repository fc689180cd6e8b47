"""``SQLDatabase``: a SQLAlchemy engine as a resource.

    resources = {"warehouse": fs.SQLDatabase(url=fs.EnvVar("WAREHOUSE_URL"), pool_size=5)}

    @pipeline.asset(requires=["warehouse"])
    def orders(context: fs.Context) -> list[dict[str, Any]]:
        with context.resources.warehouse.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("SELECT * FROM orders")).mappings()]

Bare ``postgresql://`` URLs use the psycopg 3 driver FlowStone ships with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone._errors import ConfigurationError
from flowstone.resources._base import ConfigurableResource, EnvVar, Health, healthy, unhealthy

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


@dataclass(frozen=True, repr=False)
class SQLDatabase(ConfigurableResource):
    """A database reached through SQLAlchemy; the handle is an ``Engine``.

    Setup connects once, so an unreachable database fails only the steps that need it (as a
    retryable ``resource_unavailable``) instead of failing inside the asset. The health check
    runs ``SELECT 1``; teardown disposes the engine's pool.
    """

    url: str | EnvVar
    echo: bool | EnvVar = False
    pool_size: int | EnvVar | None = None

    def __repr__(self) -> str:
        return (
            f"SQLDatabase(url={_hide_password(self.url)!r}, echo={self.echo!r}, pool_size={self.pool_size!r})"
        )

    def setup(self, config: Mapping[str, Any]) -> Engine:
        import sqlalchemy as sa

        from flowstone.store._store import normalize_url

        url = normalize_url(str(config["url"]))
        options: dict[str, Any] = {"echo": bool(config.get("echo", False)), "pool_pre_ping": True}
        if config.get("pool_size") is not None:
            options["pool_size"] = int(config["pool_size"])
        try:
            engine = sa.create_engine(url, **options)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, TypeError) as exc:
            raise ConfigurationError(
                f"SQLDatabase url {_hide_password(url)!r}: {exc}", original=exc, retryable=False
            ) from exc
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except BaseException:
            engine.dispose()
            raise
        return engine

    def teardown(self, handle: Engine) -> None:
        handle.dispose()

    def health_check(self, handle: Engine) -> Health:
        import sqlalchemy as sa

        where = handle.url.render_as_string(hide_password=True)
        try:
            with handle.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            return unhealthy(f"SELECT 1 on {where} failed: {reason[0] if reason else type(exc).__name__}")
        return healthy(f"SELECT 1 on {where}")


def _hide_password(url: str | EnvVar) -> str | EnvVar:
    if isinstance(url, EnvVar):
        return url
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
