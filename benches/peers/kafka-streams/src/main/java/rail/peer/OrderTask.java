package rail.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.function.Consumer;
import rail.peer.Model.CommandEnvelope;
import rail.peer.Model.OrderState;
import rail.peer.Model.OrderUpdate;
import rail.peer.Model.Timer;

/**
 * One task's work on its two stores, the counterpart of dev-materiels' {@code Task}
 * ({@code pipeline/engine/src/runtime/task.rs}): run a command through the machine and keep the
 * order's state and the timer index in step ({@link #decide}); fire the timers that fell due
 * ({@link #fireDue}). The same code runs in the Kafka Streams processor (on its RocksDB stores)
 * and in {@link Replay} (on maps).
 */
final class OrderTask {
    /** The task's state: the order store and the timer index, ordered by key bytes. */
    interface Stores {
        /** The order's state, or null for an order never seen. */
        OrderState get(String orderId);

        void put(OrderState state);

        void putTimer(byte[] key);

        void deleteTimer(byte[] key);

        /** The keys of the timers due at {@code nowMs} (due &lt;= now), in key order: (due, order id). */
        List<byte[]> dueTimers(long nowMs);
    }

    private final OrderMachine machine;
    private final Stores stores;

    OrderTask(OrderMachine machine, Stores stores) {
        this.machine = machine;
        this.stores = stores;
    }

    /**
     * {@code Task::decide}: the command's update, its state and timer stored; or null (a
     * command already seen, a same-content re-placement), nothing stored.
     */
    OrderUpdate decide(CommandEnvelope envelope, long nowMs) {
        OrderState state = stores.get(envelope.orderId());
        if (state == null) state = new OrderState(envelope.orderId());
        Timer before = state.timer;
        OrderUpdate update = machine.decideInPlace(state, envelope, nowMs);
        if (update != null) store(state, before);
        return update;
    }

    /**
     * {@code Task::punctuate}: fires every timer due at {@code nowMs}, in (due, order id) order,
     * handing each update to {@code emit}. The due keys are taken first and leave the index
     * ({@code TimerQueue::pop_due}); a timer set while firing waits for the next punctuation.
     */
    void fireDue(long nowMs, Consumer<OrderUpdate> emit) {
        for (byte[] key : stores.dueTimers(nowMs)) {
            stores.deleteTimer(key);
            OrderState state = stores.get(TimerKeys.orderId(key));
            if (state == null) continue;
            Timer before = state.timer;
            OrderUpdate update = machine.fireTimerInPlace(state, nowMs);
            if (update == null) continue;
            // The popped key is the entry of `before` (the index follows the states), already
            // deleted; were it not, `before`'s own entry goes too, as in TimerQueue::replace.
            if (before != null) {
                byte[] beforeKey = TimerKeys.key(before.dueMs(), state.orderId);
                if (!Arrays.equals(beforeKey, key)) stores.deleteTimer(beforeKey);
            }
            if (state.timer != null) stores.putTimer(TimerKeys.key(state.timer.dueMs(), state.orderId));
            stores.put(state);
            emit.accept(update);
        }
    }

    /** Writes the state, and moves its timer in the index if it changed ({@code TimerQueue::replace}). */
    private void store(OrderState state, Timer before) {
        Timer after = state.timer;
        if (!Objects.equals(before, after)) {
            if (before != null) stores.deleteTimer(TimerKeys.key(before.dueMs(), state.orderId));
            if (after != null) stores.putTimer(TimerKeys.key(after.dueMs(), state.orderId));
        }
        stores.put(state);
    }

    /**
     * The timer index's keys: the due time as 8 big-endian bytes, then the order id in UTF-8. In
     * byte order (RocksDB's), keys sort by (due, order id), as Rust's {@code BTreeSet<(u64, String)>}.
     */
    static final class TimerKeys {
        private TimerKeys() {}

        static byte[] key(long dueMs, String orderId) {
            byte[] id = orderId.getBytes(StandardCharsets.UTF_8);
            return ByteBuffer.allocate(8 + id.length).putLong(dueMs).put(id).array();
        }

        static long dueMs(byte[] key) {
            return ByteBuffer.wrap(key, 0, 8).getLong();
        }

        static String orderId(byte[] key) {
            return new String(key, 8, key.length - 8, StandardCharsets.UTF_8);
        }
    }
}
