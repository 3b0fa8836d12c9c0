package rail.peer;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.state.Stores;

/**
 * dev-materiels as a Kafka Streams application, for the end-to-end bench: source {@code orders};
 * one processor ({@link OrderProcessor}) running the order state machine on a persistent
 * (RocksDB) order store and a timer index, both with their changelogs and behind the record
 * cache; a wall-clock punctuator every commit interval; sinks {@code order-updates} and the
 * dead-letter topic; exactly_once_v2.
 */
public final class Main {
    private Main() {}

    static final String USAGE = "rail.peer.Main --bootstrap HOST:PORT --application-id ID --state-dir DIR"
            + " [--orders-topic orders] [--updates-topic order-updates] [--dlq-topic orders.dlq]"
            + " [--commit-interval-ms 100] [--prepare-after-ms 2000] [--ship-after-ms 5000]"
            + " [--threads <available processors>] [--cache-mib 64] [--record-cache-mib 32]";

    /** {@code --name value} pairs; {@code --help} prints {@code usage} and exits. */
    static Map<String, String> parse(String[] args, String usage) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--help")) {
                System.out.println(usage);
                System.exit(0);
            }
            if (!args[i].startsWith("--") || i + 1 >= args.length) throw new IllegalArgumentException("bad argument " + args[i] + "; usage: " + usage);
            out.put(args[i].substring(2), args[++i]);
        }
        return out;
    }

    static String required(Map<String, String> args, String name) {
        String value = args.get(name);
        if (value == null) throw new IllegalArgumentException("--" + name + " is required; usage: " + USAGE);
        return value;
    }

    static Topology topology(OrderMachine machine, String orders, String updates, String dlq, Duration punctuateEvery) {
        Topology topology = new Topology();
        // Keys stay bytes: decode_command compares the key's bytes with the order id's.
        topology.addSource("orders", new ByteArrayDeserializer(), new ByteArrayDeserializer(), orders);
        topology.addProcessor("machine", () -> new OrderProcessor(machine, punctuateEvery), "orders");
        // Both stores are logged (compacted changelogs, restored on failover) and cached: the
        // record cache keeps the commit interval's writes and sends each key once per commit to
        // RocksDB and the changelog, as dev-materiels' write-back cache of a transaction does.
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(OrderProcessor.ORDER_STORE), Serdes.String(), new OrderStateSerde())
                        .withCachingEnabled(),
                "machine");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(OrderProcessor.TIMER_STORE), Serdes.Bytes(), Serdes.ByteArray())
                        .withCachingEnabled(),
                "machine");
        topology.addSink(OrderProcessor.UPDATES_SINK, updates, new ByteArraySerializer(), new ByteArraySerializer(), "machine");
        topology.addSink(OrderProcessor.DLQ_SINK, dlq, new ByteArraySerializer(), new ByteArraySerializer(), "machine");
        return topology;
    }

    /** The Streams configuration of the flags {@code a}: the peer's tuning, explained line by line. */
    static Properties streamsConfig(Map<String, String> a) {
        long commitMs = Long.parseLong(a.getOrDefault("commit-interval-ms", "100"));
        int threads = Integer.parseInt(a.getOrDefault("threads", Integer.toString(Runtime.getRuntime().availableProcessors())));
        long cacheMib = Long.parseLong(a.getOrDefault("cache-mib", "64"));
        long recordCacheMib = Long.parseLong(a.getOrDefault("record-cache-mib", "32"));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, required(a, "application-id"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, required(a, "bootstrap"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, required(a, "state-dir"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
        // One stream thread per core by default; a thread takes whole tasks (partitions), so
        // threads beyond the partition count stay idle.
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        // Record cache, shared by the threads: one commit interval's writes at the bench's rates
        // (tens of thousands of orders a second, two small entries each) fit several times over,
        // so every key reaches RocksDB and its changelog once per commit. Kafka Streams' default
        // is 10 MiB.
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, recordCacheMib << 20);
        // RocksDB bounded by one shared cache (see BoundedMemoryRocksDbConfig).
        props.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedMemoryRocksDbConfig.class);
        props.put(BoundedMemoryRocksDbConfig.CACHE_BYTES_CONFIG, Long.toString(cacheMib << 20));

        // Producer. Kafka Streams overrides linger.ms to 100 ms; with a 100 ms commit interval
        // that holds most records until the commit flushes them, so the commit (and each update's
        // latency) pays for a whole interval's sends at once. 5 ms (the Kafka 4 producer default,
        // and dev-materiels' librdkafka setting) batches well at high rates and sends steadily
        // at low ones. Batches of up to 128 KiB rather than 16 KiB: at high rates a partition
        // gets hundreds of ~250-byte updates per linger, which librdkafka (batch.size 1 MB by
        // default) sends in one request too. acks=all and idempotence come with exactly_once_v2;
        // the transaction timeout is Kafka Streams' EOS default, 10 s, as dev-materiels'.
        props.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        props.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 128 * 1024);
        // Consumer: read_committed comes with exactly_once_v2. A fetch waits at most 50 ms for
        // data, as dev-materiels' (fetch.wait.max.ms=50) instead of 500 ms; max.poll.records stays
        // Kafka Streams' 1000.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG), 50);
        // A dead instance's partitions move after 10 s, as dev-materiels' session timeout.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), 10_000);
        return props;
    }

    public static void main(String[] argv) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        Map<String, String> a = parse(argv, USAGE);
        long commitMs = Long.parseLong(a.getOrDefault("commit-interval-ms", "100"));
        OrderMachine machine = new OrderMachine(
                Long.parseLong(a.getOrDefault("prepare-after-ms", "2000")), Long.parseLong(a.getOrDefault("ship-after-ms", "5000")));
        Topology topology = topology(machine, a.getOrDefault("orders-topic", "orders"), a.getOrDefault("updates-topic", "order-updates"),
                a.getOrDefault("dlq-topic", "orders.dlq"), Duration.ofMillis(commitMs));
        KafkaStreams streams = new KafkaStreams(topology, streamsConfig(a));
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            System.out.println("state " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) stopped.countDown();
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }
}
