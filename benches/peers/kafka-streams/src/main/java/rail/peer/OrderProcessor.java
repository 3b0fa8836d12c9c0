package rail.peer;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import rail.peer.CommandDecoder.InvalidCommand;
import rail.peer.Model.CommandEnvelope;
import rail.peer.Model.OrderState;
import rail.peer.Model.OrderUpdate;

/**
 * The topology's one processor: dev-materiels' stream task. Each record of {@code orders} is
 * decoded ({@code decode_command}); an invalid one goes to the dead-letter sink, a valid one
 * through the machine ({@link OrderTask#decide}), its update to the {@code order-updates} sink.
 * A wall-clock punctuator, every commit interval, fires the timers that fell due
 * ({@link OrderTask#fireDue}).
 */
final class OrderProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    static final String ORDER_STORE = "order-store";
    static final String TIMER_STORE = "timer-index";
    static final String UPDATES_SINK = "updates";
    static final String DLQ_SINK = "dlq";
    private static final byte[] NOTHING = new byte[0];

    private final OrderMachine machine;
    private final Duration punctuateEvery;
    private ProcessorContext<byte[], byte[]> context;
    private OrderTask task;

    OrderProcessor(OrderMachine machine, Duration punctuateEvery) {
        this.machine = machine;
        this.punctuateEvery = punctuateEvery;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        this.context = context;
        KeyValueStore<String, OrderState> orders = context.getStateStore(ORDER_STORE);
        KeyValueStore<Bytes, byte[]> timers = context.getStateStore(TIMER_STORE);
        this.task = new OrderTask(machine, new StreamsStores(orders, timers));
        context.schedule(punctuateEvery, PunctuationType.WALL_CLOCK_TIME, this::punctuate);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        CommandEnvelope envelope;
        try {
            envelope = CommandDecoder.decode(record.key(), record.value());
        } catch (InvalidCommand invalid) {
            context.forward(new Record<>(record.key(), record.value(), record.timestamp(), deadLetterHeaders(invalid)), DLQ_SINK);
            return;
        }
        // The stream thread's clock, read once per poll loop: the processing time of the batch.
        OrderUpdate update = task.decide(envelope, context.currentSystemTimeMs());
        if (update != null) forward(update, record.timestamp());
    }

    private void punctuate(long nowMs) {
        task.fireDue(nowMs, update -> forward(update, nowMs));
    }

    private void forward(OrderUpdate update, long timestamp) {
        context.forward(new Record<>(update.orderId().getBytes(StandardCharsets.UTF_8), Json.update(update), timestamp), UPDATES_SINK);
    }

    /** The headers dev-materiels puts on a dead letter ({@code dead_letter_headers}). */
    private RecordHeaders deadLetterHeaders(InvalidCommand invalid) {
        RecordHeaders headers = new RecordHeaders();
        headers.add("dlq.error", invalid.getMessage().getBytes(StandardCharsets.UTF_8));
        headers.add("dlq.error.kind", invalid.kind.getBytes(StandardCharsets.UTF_8));
        context.recordMetadata().ifPresent((RecordMetadata source) -> {
            headers.add("dlq.source.topic", source.topic().getBytes(StandardCharsets.UTF_8));
            headers.add("dlq.source.partition", Integer.toString(source.partition()).getBytes(StandardCharsets.UTF_8));
            headers.add("dlq.source.offset", Long.toString(source.offset()).getBytes(StandardCharsets.UTF_8));
        });
        return headers;
    }

    /** The task's stores as Kafka Streams holds them: RocksDB with a changelog, behind the record cache. */
    private static final class StreamsStores implements OrderTask.Stores {
        private final KeyValueStore<String, OrderState> orders;
        private final KeyValueStore<Bytes, byte[]> timers;
        /**
         * No timer of the index is due before this (unsigned; 0: unknown, as after a restore):
         * every punctuation fires all timers due up to its time, and a timer set since lowers it.
         * A punctuation scans only [this, now]: never over the tombstones of the timers fired or
         * cancelled before (they stay in RocksDB until a compaction), and not at all while nothing
         * can be due. A range, not all(): the record cache copies the keys an iterator covers.
         */
        private long lowestDue = 0;

        StreamsStores(KeyValueStore<String, OrderState> orders, KeyValueStore<Bytes, byte[]> timers) {
            this.orders = orders;
            this.timers = timers;
        }

        @Override
        public OrderState get(String orderId) {
            return orders.get(orderId);
        }

        @Override
        public void put(OrderState state) {
            orders.put(state.orderId, state);
        }

        @Override
        public void putTimer(byte[] key) {
            timers.put(Bytes.wrap(key), NOTHING);
            long due = OrderTask.TimerKeys.dueMs(key);
            if (Long.compareUnsigned(due, lowestDue) < 0) lowestDue = due;
        }

        @Override
        public void deleteTimer(byte[] key) {
            // put(key, null) deletes without reading the old value back, as delete(key) would.
            timers.put(Bytes.wrap(key), null);
        }

        @Override
        public List<byte[]> dueTimers(long nowMs) {
            if (Long.compareUnsigned(nowMs, lowestDue) < 0) return List.of();
            List<byte[]> due = new ArrayList<>();
            // From the lowest possible due to (due now + 1, no order id): every key due at or
            // before now, in (due, order id) order; the bounds are inclusive and no key is 8 bytes.
            Bytes from = Bytes.wrap(OrderTask.TimerKeys.key(lowestDue, ""));
            try (KeyValueIterator<Bytes, byte[]> it =
                    nowMs == -1L ? timers.all() : timers.range(from, Bytes.wrap(OrderTask.TimerKeys.key(nowMs + 1, "")))) {
                while (it.hasNext()) due.add(it.next().key.get());
            }
            lowestDue = nowMs + 1;
            return due;
        }
    }
}
