-- The materials team's catalogue, as dev-materiels reads it (through Kafka Connect: Debezium
-- captures this table into the compacted topic `catalogue`, docs/integration.md). dev-materiels
-- reads the columns sku, description, active and stock; others may be added freely.
-- The SKU may be NULL or be changed: the row's key is its id. A row without a SKU or with a
-- negative stock goes to the catalogue's dead-letter topic.
CREATE TABLE IF NOT EXISTS catalogue (
    id          bigserial PRIMARY KEY,
    sku         text UNIQUE,
    description text NOT NULL DEFAULT '',
    active      boolean NOT NULL DEFAULT true,
    stock       integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
