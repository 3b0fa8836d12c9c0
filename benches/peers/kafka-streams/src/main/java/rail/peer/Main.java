package rail.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * dev-materiels as a Kafka Streams application: source `orders`, one processor running the order
 * state machine on a persistent (RocksDB) key-value store with its changelog, a second store
 * indexing timers by due time, a wall-clock punctuator every commit interval, sinks
 * `order-updates` and the dead-letter topic; exactly_once_v2.
 */
public final class Main {
    static final String ORDER_STORE = "order-store";
    static final String TIMER_STORE = "timer-index";

    static final class OrderProcessor implements Processor<String, byte[], String, byte[]> {
        private final OrderMachine machine;
        private final long punctuateEveryMs;
        private ProcessorContext<String, byte[]> context;
        private KeyValueStore<String, String> orders;
        private KeyValueStore<String, String> timers;

        OrderProcessor(OrderMachine machine, long punctuateEveryMs) {
            this.machine = machine;
            this.punctuateEveryMs = punctuateEveryMs;
        }

        @Override
        public void init(ProcessorContext<String, byte[]> context) {
            this.context = context;
            this.orders = context.getStateStore(ORDER_STORE);
            this.timers = context.getStateStore(TIMER_STORE);
            context.schedule(Duration.ofMillis(punctuateEveryMs), PunctuationType.WALL_CLOCK_TIME, this::punctuate);
        }

        private static String timerKey(JsonNode timer, String orderId) {
            return String.format("%020d|%s", timer.get("due_ms").asLong(), orderId);
        }

        private void store(ObjectNode before, ObjectNode after) {
            String orderId = after.get("order_id").asText();
            JsonNode oldTimer = before == null ? null : before.get("timer");
            JsonNode newTimer = after.get("timer");
            if (oldTimer != null && !oldTimer.isNull() && !oldTimer.equals(newTimer)) timers.delete(timerKey(oldTimer, orderId));
            if (newTimer != null && !newTimer.isNull()) timers.put(timerKey(newTimer, orderId), "");
            orders.put(orderId, after.toString());
        }

        private void emit(OrderMachine.Decision decision, long timestamp) {
            try {
                byte[] update = OrderMachine.JSON.writeValueAsBytes(decision.update());
                context.forward(new Record<>(decision.update().get("order_id").asText(), update, timestamp), "updates");
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        }

        @Override
        public void process(Record<String, byte[]> record) {
            JsonNode command;
            try {
                command = record.value() == null ? null : OrderMachine.JSON.readTree(record.value());
            } catch (Exception e) {
                command = null;
            }
            String why = OrderMachine.invalid(record.key(), command);
            if (why != null) {
                RecordHeaders headers = new RecordHeaders();
                headers.add("dlq.error", why.getBytes(StandardCharsets.UTF_8));
                context.forward(new Record<>(record.key(), record.value(), record.timestamp(), headers), "dlq");
                return;
            }
            String orderId = command.get("order_id").asText();
            ObjectNode state = read(orderId);
            OrderMachine.Decision decision = machine.decide(state, command, System.currentTimeMillis());
            if (decision == null) return;
            store(state, decision.state());
            emit(decision, record.timestamp());
        }

        private ObjectNode read(String orderId) {
            String raw = orders.get(orderId);
            if (raw == null) return null;
            try {
                return (ObjectNode) OrderMachine.JSON.readTree(raw);
            } catch (Exception e) {
                throw new IllegalStateException("corrupt state for " + orderId, e);
            }
        }

        private void punctuate(long now) {
            List<String> due = new ArrayList<>();
            try (KeyValueIterator<String, String> it = timers.range("", String.format("%020d|~", now))) {
                while (it.hasNext()) due.add(it.next().key);
            }
            for (String key : due) {
                timers.delete(key);
                String orderId = key.substring(21);
                ObjectNode state = read(orderId);
                if (state == null) continue;
                OrderMachine.Decision decision = machine.fire(state, now);
                if (decision == null) continue;
                store(state, decision.state());
                emit(decision, now);
            }
        }
    }

    static Map<String, String> parse(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--help")) {
                System.out.println("rail.peer.Main --bootstrap HOST:PORT --application-id ID --state-dir DIR"
                        + " [--orders-topic orders] [--updates-topic order-updates] [--dlq-topic orders.dlq]"
                        + " [--commit-interval-ms 100] [--prepare-after-ms 2000] [--ship-after-ms 5000] [--threads 1]");
                System.exit(0);
            }
            if (!args[i].startsWith("--") || i + 1 >= args.length) throw new IllegalArgumentException("bad argument " + args[i]);
            out.put(args[i].substring(2), args[++i]);
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        Map<String, String> a = parse(args);
        String orders = a.getOrDefault("orders-topic", "orders");
        String updates = a.getOrDefault("updates-topic", "order-updates");
        String dlq = a.getOrDefault("dlq-topic", "orders.dlq");
        long commitMs = Long.parseLong(a.getOrDefault("commit-interval-ms", "100"));
        OrderMachine machine = new OrderMachine(
                Long.parseLong(a.getOrDefault("prepare-after-ms", "2000")), Long.parseLong(a.getOrDefault("ship-after-ms", "5000")));

        Topology topology = new Topology();
        topology.addSource("orders", new StringDeserializer(), new ByteArrayDeserializer(), orders);
        topology.addProcessor("machine", () -> new OrderProcessor(machine, commitMs), "orders");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(ORDER_STORE), Serdes.String(), Serdes.String()), "machine");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(TIMER_STORE), Serdes.String(), Serdes.String()), "machine");
        topology.addSink("updates", updates, new StringSerializer(), new ByteArraySerializer(), "machine");
        topology.addSink("dlq", dlq, new StringSerializer(), new ByteArraySerializer(), "machine");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, a.get("application-id"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, a.get("state-dir"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(a.getOrDefault("threads", "1")));
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        KafkaStreams streams = new KafkaStreams(topology, props);
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
