"""PostgreSQL and the broker's own records: the tables and the engine, the migrations and roles,
the purchase index's guard, the outbox of purchase events, the dead letters."""
