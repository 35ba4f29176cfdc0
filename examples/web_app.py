"""A web application's scheduler: one engine, one session factory, one transaction per request.

The app has its own declarative ``Base`` and an ``orders`` table. Placing an order inserts the
order *and* enqueues its "send confirmation" job in the same transaction, with
``scheduler.enqueue(..., session=session)``: if the request fails and rolls back, neither the
order nor the job exists; if it commits, both do, and a node sends the confirmation (once the
transaction is committed, so the job always finds its order).

    python examples/web_app.py

Uses ``PG_SCHEDULER_DATABASE_URL`` if set, else an embedded PostgreSQL in ``./.pg_scheduler``.
No web framework is needed to show it: ``place_order`` is what a request handler would do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import pg_scheduler
from pg_scheduler import JobContext, JobStatus, Scheduler, SchedulerConfig

PREFIX = os.environ.get("PG_SCHEDULER_TABLE_PREFIX", "webapp_")
TIMEOUT = 60.0


class Base(DeclarativeBase):
    """The application's own declarative base: pg_scheduler's tables are never part of it."""


class Order(Base):
    __tablename__ = f"{PREFIX}orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]
    amount_cents: Mapped[int]
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class PaymentDeclined(Exception):
    pass


@contextlib.contextmanager
def database() -> Iterator[str]:
    """``PG_SCHEDULER_DATABASE_URL``, or an embedded PostgreSQL kept in ./.pg_scheduler."""
    url = os.environ.get("PG_SCHEDULER_DATABASE_URL")
    if url:
        yield url
        return
    from pg_scheduler import embedded

    server = embedded.start(".pg_scheduler")
    try:
        yield server.url
    finally:
        server.stop()


class App:
    """What a web app sets up once at startup: engine, session factory, scheduler, handlers."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_size=5)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        # The scheduler shares the app's engine and session factory.
        self.scheduler = Scheduler(
            SchedulerConfig(engine=self.engine, session_factory=self.Session, table_prefix=PREFIX)
        )
        self.confirmed = threading.Event()
        self.scheduler.one_time("send_confirmation", retries=3)(self.send_confirmation)

    def install(self) -> None:
        """At deploy time: the app's tables, and pg_scheduler's (with its own Alembic history)."""
        # A fresh start, so that the checks below are about this run only.
        Base.metadata.drop_all(self.engine)
        pg_scheduler.migrations.downgrade(self.engine, table_prefix=PREFIX)

        Base.metadata.create_all(self.engine)
        pg_scheduler.migrations.upgrade(self.engine, table_prefix=PREFIX)

    # -- a request handler ----------------------------------------------------------------------
    def place_order(self, customer: str, amount_cents: int, *, card_ok: bool = True) -> int:
        with self.Session.begin() as session:  # one transaction: commit on success
            order = Order(customer=customer, amount_cents=amount_cents)
            session.add(order)
            session.flush()  # the order's id, inside the transaction
            self.scheduler.enqueue("send_confirmation", {"order_id": order.id}, session=session)
            if not card_ok:
                raise PaymentDeclined(f"card declined for {customer}")  # rolls back both
        return order.id

    # -- a job --------------------------------------------------------------------------------
    def send_confirmation(self, ctx: JobContext) -> None:
        with self.Session.begin() as session:
            order = session.get(Order, ctx.params["order_id"])
            assert order is not None, "the job only exists if its order was committed"
            print(f"confirmation to {order.customer} for order {order.id} (job {ctx.job_key})")
            # An idempotent side effect: a retry after a crash finds it already done.
            if order.confirmed_at is None:
                order.confirmed_at = dt.datetime.now(dt.timezone.utc)
        self.confirmed.set()


def main() -> None:
    with database() as url:
        app = App(url)
        app.install()
        with app.scheduler:
            order_id = app.place_order("ada@example.com", 4200)
            try:
                app.place_order("mallory@example.com", 999, card_ok=False)
            except PaymentDeclined as exc:
                print(f"request failed: {exc}; its order and its job were rolled back")
            assert app.confirmed.wait(TIMEOUT), "the confirmation was not sent"

        jobs = app.scheduler.list_jobs(name="send_confirmation")
        with app.Session() as session:
            orders = session.scalars(sa.select(Order)).all()
        app.engine.dispose()

    assert [o.id for o in orders] == [order_id], orders  # only the committed order
    assert orders[0].confirmed_at is not None
    assert len(jobs) == 1, jobs  # only the committed order's job
    assert jobs[0].status is JobStatus.COMPLETED and jobs[0].params == {"order_id": order_id}
    print(
        f"ok: 1 order, 1 confirmation job ({jobs[0].key}) completed; the failed request left none"
    )


if __name__ == "__main__":
    main()
