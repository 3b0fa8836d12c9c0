package rail.peer;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import rail.peer.CommandDecoder.InvalidCommand;
import rail.peer.Model.CommandEnvelope;
import rail.peer.Model.OrderState;
import rail.peer.Model.OrderUpdate;

/**
 * The peer without Kafka, for the equivalence test ({@code benches/tests/peer_equivalence.rs}):
 * the processor's very steps ({@link CommandDecoder}, {@link OrderTask} with {@link OrderMachine},
 * {@link OrderStateSerde}, the timer index keys) on stores kept in memory, driven by events read
 * from stdin, one JSON object per line:
 *
 * <pre>
 * {"at_ms": 1000, "key": "ORD-1", "value": "{\"schema_version\":1,...}"}   a record of orders, processed at at_ms
 * {"at_ms": 1100, "tick": true}                                           a punctuation at at_ms
 * </pre>
 *
 * ({@code key} null or absent: a record without a key; {@code value} null: a record without a
 * value.) Prints one line per output on stdout: an update exactly as produced to
 * {@code order-updates}, or {@code {"dead_letter":true,"key":...}} for a record sent to the
 * dead-letter topic. Nothing else goes to stdout.
 *
 * <pre>
 * java -cp 'target/classes:target/dependency/*' rail.peer.Replay --prepare-after-ms 1000 --ship-after-ms 1000 &lt; events
 * </pre>
 */
public final class Replay {
    private Replay() {}

    static final String USAGE = "rail.peer.Replay [--prepare-after-ms 2000] [--ship-after-ms 5000] < events.jsonl";

    /**
     * The stores as a key-value store holds them: order states as their serde bytes (each step
     * reads the state back from its bytes and writes it as bytes), timer keys in byte order.
     */
    static final class MemoryStores implements OrderTask.Stores {
        private final Map<String, byte[]> orders = new HashMap<>();
        private final TreeSet<byte[]> timers = new TreeSet<>(Arrays::compareUnsigned);

        @Override
        public OrderState get(String orderId) {
            byte[] bytes = orders.get(orderId);
            return bytes == null ? null : OrderStateSerde.decode(bytes);
        }

        @Override
        public void put(OrderState state) {
            byte[] bytes = OrderStateSerde.encode(state);
            // The serde must give back what it was given: check it on every write.
            OrderState back = OrderStateSerde.decode(bytes);
            if (!back.equals(state) || !Arrays.equals(OrderStateSerde.encode(back), bytes)) {
                throw new IllegalStateException("the serde does not round-trip " + state + ": read back " + back);
            }
            orders.put(state.orderId, bytes);
        }

        @Override
        public void putTimer(byte[] key) {
            timers.add(key);
        }

        @Override
        public void deleteTimer(byte[] key) {
            timers.remove(key);
        }

        @Override
        public List<byte[]> dueTimers(long nowMs) {
            List<byte[]> due = new ArrayList<>();
            for (byte[] key : timers) {
                if (Long.compareUnsigned(OrderTask.TimerKeys.dueMs(key), nowMs) > 0) break;
                due.add(key);
            }
            return due;
        }
    }

    public static void main(String[] argv) throws IOException {
        Map<String, String> a = Main.parse(argv, USAGE);
        OrderMachine machine = new OrderMachine(
                Long.parseLong(a.getOrDefault("prepare-after-ms", "2000")), Long.parseLong(a.getOrDefault("ship-after-ms", "5000")));
        OrderTask task = new OrderTask(machine, new MemoryStores());
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8), 1 << 16);
        OutputStream out = new BufferedOutputStream(System.out, 1 << 16);
        String line;
        long lineNumber = 0;
        while ((line = in.readLine()) != null) {
            lineNumber++;
            if (line.isBlank()) continue;
            JsonNode event = Json.MAPPER.readTree(line);
            JsonNode at = event.get("at_ms");
            if (at == null || !at.canConvertToExactIntegral()) throw new IllegalArgumentException("line " + lineNumber + ": no at_ms");
            long atMs = at.bigIntegerValue().longValue(); // a u64, kept as its 64 bits
            if (event.path("tick").asBoolean(false)) {
                task.fireDue(atMs, update -> writeLine(out, Json.update(update)));
                continue;
            }
            String key = text(event.get("key"));
            String value = text(event.get("value"));
            byte[] keyBytes = key == null ? null : key.getBytes(StandardCharsets.UTF_8);
            byte[] valueBytes = value == null ? null : value.getBytes(StandardCharsets.UTF_8);
            // OrderProcessor.process, with at_ms for the stream thread's clock.
            CommandEnvelope envelope;
            try {
                envelope = CommandDecoder.decode(keyBytes, valueBytes);
            } catch (InvalidCommand invalid) {
                writeLine(out, Json.deadLetterLine(key));
                continue;
            }
            OrderUpdate update = task.decide(envelope, atMs);
            if (update != null) writeLine(out, Json.update(update));
        }
        out.flush();
    }

    private static String text(JsonNode node) {
        if (node == null || node.isNull()) return null;
        if (!node.isTextual()) throw new IllegalArgumentException("key and value must be strings or null, not " + node);
        return node.textValue();
    }

    private static void writeLine(OutputStream out, byte[] line) {
        try {
            out.write(line);
            out.write('\n');
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
