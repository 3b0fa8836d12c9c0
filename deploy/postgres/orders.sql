-- The orders as reporting sees them: one row per order, its latest status and version, written
-- by Kafka Connect's JDBC sink (Debezium's) from `order-updates` (docs/integration.md).
-- The sink upserts; the trigger makes the table keep the newest version of each order, so a
-- record delivered again (the sink is at-least-once: after a worker crash it reads again from
-- its last committed offset) never moves a row back to an older version.
CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    version      bigint NOT NULL,
    status       text,
    reason       text,
    timestamp_ms bigint NOT NULL
);

CREATE OR REPLACE FUNCTION orders_keep_newest() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version < OLD.version THEN
        RETURN NULL; -- an older version than the row's: skip it
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER orders_keep_newest BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_keep_newest();
