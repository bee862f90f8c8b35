"""Route aliases: which configured route serves a gateway route's name.

Every route serves its own backends until an experiment on it promotes another route: from
then on requests for the name go to that route's backends (``chat`` answered by ``chat-big``).
The alias lives in the relational store, so every ``serve`` process on the database agrees;
each re-reads it when its running experiments change (a promotion ends one). Moving the
name back to the route itself deletes the alias.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from opsloop.db import Database
from opsloop.tables import RouteAlias, utcnow

__all__ = ["RouteAliases", "applicable"]


def applicable(aliases: Mapping[str, str], routes: Collection[str]) -> dict[str, str]:
    """The aliases that take effect: those of a configured route to a configured route.

    An alias to a route the settings no longer have is ignored, so removing a route from the
    configuration never leaves a name without backends; nor does an alias keep a removed
    name served.
    """
    return {route: target for route, target in aliases.items() if route in routes and target in routes}


class RouteAliases:
    """The stored route aliases.

    Args:
        db: The started relational store.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> dict[str, str]:
        """Route name -> the route that serves it, for the names that do not serve themselves."""
        with self._db.read() as session:
            return {
                route: target
                for route, target in session.execute(select(RouteAlias.route, RouteAlias.target))
            }

    def set(self, route: str, target: str, *, actor: str) -> str:
        """Serve ``route`` by ``target`` (by itself again when equal); returns the route it replaced."""

        def write(session: Session) -> str:
            row = session.get(RouteAlias, route)
            before = row.target if row is not None else route
            if target == route:
                session.execute(delete(RouteAlias).where(RouteAlias.route == route))
            elif row is None:
                session.add(RouteAlias(route=route, target=target, updated_at=utcnow(), updated_by=actor))
            else:
                row.target, row.updated_at, row.updated_by = target, utcnow(), actor
            return before

        return self._db.write(write)
