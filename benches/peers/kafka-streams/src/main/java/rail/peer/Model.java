package rail.peer;

import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.annotation.JsonPropertyOrder;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * The order domain of dev-materiels, typed, as in {@code state/src/order/mod.rs}: the statuses, the
 * commands read from {@code orders}, the updates written to {@code order-updates}, and the state
 * kept per order. Names and field orders follow the Rust types one for one.
 */
final class Model {
    private Model() {}

    /** {@code OrderStatus}; {@link #code} is Rust's {@code OrderStatus::code}. */
    enum OrderStatus {
        Accepted(1), Rejected(2), InPreparation(3), Shipped(4), Delivered(5), Cancelled(6);

        private static final OrderStatus[] BY_CODE = {null, Accepted, Rejected, InPreparation, Shipped, Delivered, Cancelled};
        final byte code;

        OrderStatus(int code) {
            this.code = (byte) code;
        }

        static OrderStatus fromCode(int code) {
            if (code < 1 || code >= BY_CODE.length) throw new IllegalArgumentException("unknown status code " + code);
            return BY_CODE[code];
        }
    }

    /** {@code Outcome}. */
    enum Outcome { Applied, Refused }

    /** {@code Trigger}. */
    enum Trigger { Command, PrepareTimer, ShipTimer }

    /** {@code TimerKind}; {@link #trigger} is Rust's {@code TimerKind::trigger}. */
    enum TimerKind {
        Prepare(Trigger.PrepareTimer), Ship(Trigger.ShipTimer);

        final Trigger trigger;

        TimerKind(Trigger trigger) {
            this.trigger = trigger;
        }
    }

    /** {@code Timer}: a wall-clock timer kept with the order's state. */
    record Timer(TimerKind kind, long dueMs) {}

    /** {@code OrderLine}. {@code quantity} is a Rust {@code u32}, 0..=4294967295. */
    record OrderLine(String sku, long quantity) {}

    /** {@code PlaceOrder}; equal content is Rust's derived {@code PartialEq} (record equality). */
    record PlaceOrder(String wagonId, String requestedBy, List<OrderLine> lines) implements Command {}

    /** {@code Command::CancelOrder}. */
    record CancelOrder(String reason) implements Command {}

    /** {@code Command::ConfirmDelivery}. */
    record ConfirmDelivery() implements Command {}

    /** {@code Command}, internally tagged by {@code "type"} on the wire. */
    sealed interface Command permits PlaceOrder, CancelOrder, ConfirmDelivery {}

    /**
     * {@code CommandEnvelope}, as read from {@code orders} by {@link CommandDecoder}.
     * {@code schemaVersion} is a {@code u32}; {@code issuedAtMs} a {@code u64}, kept as its 64 bits.
     */
    record CommandEnvelope(long schemaVersion, String commandId, long issuedAtMs, String orderId, Command command) {}

    /**
     * {@code OrderUpdate}, as written to {@code order-updates}: the same JSON as Rust's
     * {@code serde_json::to_string}, fields in declaration order, absent options as {@code null}.
     */
    @JsonPropertyOrder({
        "schema_version", "order_id", "version", "status", "previous_status", "outcome", "reason", "trigger", "command_id",
        "timestamp_ms"
    })
    record OrderUpdate(
            @JsonProperty("schema_version") int schemaVersion,
            @JsonProperty("order_id") String orderId,
            @JsonProperty("version") long version,
            @JsonProperty("status") OrderStatus status,
            @JsonProperty("previous_status") OrderStatus previousStatus,
            @JsonProperty("outcome") Outcome outcome,
            @JsonProperty("reason") String reason,
            @JsonProperty("trigger") Trigger trigger,
            @JsonProperty("command_id") String commandId,
            @JsonProperty("timestamp_ms") long timestampMs) {}

    /**
     * {@code OrderState}: everything kept about one order, the value of the order store and of its
     * changelog (written by {@link OrderStateSerde}). Mutable, like the state Rust's
     * {@code decide_in_place} works on: the machine changes it only when it returns an update.
     */
    static final class OrderState {
        final String orderId;
        /** The version of the last update emitted for this order (0: none yet). */
        long version;
        /** Null while the order was never placed. */
        OrderStatus status;
        /** The content of the PlaceOrder that created the order, or null. */
        PlaceOrder placed;
        /** Ids of the commands that moved the order (outcome Applied), for its whole life. */
        final List<String> appliedCommands;
        /** Ids of the last refused commands, oldest first, at most {@link OrderMachine#REMEMBERED_REFUSALS}. */
        final ArrayDeque<String> refusedCommands;
        /** Null when the order waits on no timer. */
        Timer timer;

        /** {@code OrderState::new}. */
        OrderState(String orderId) {
            this(orderId, 0, null, null, new ArrayList<>(2), new ArrayDeque<>(4), null);
        }

        OrderState(String orderId, long version, OrderStatus status, PlaceOrder placed, List<String> appliedCommands,
                ArrayDeque<String> refusedCommands, Timer timer) {
            this.orderId = orderId;
            this.version = version;
            this.status = status;
            this.placed = placed;
            this.appliedCommands = appliedCommands;
            this.refusedCommands = refusedCommands;
            this.timer = timer;
        }

        /** {@code OrderState::has_seen}: applied for life, or refused and still remembered. */
        boolean hasSeen(String commandId) {
            return appliedCommands.contains(commandId) || refusedCommands.contains(commandId);
        }

        @Override
        public boolean equals(Object other) {
            if (!(other instanceof OrderState s)) return false;
            return orderId.equals(s.orderId) && version == s.version && status == s.status && Objects.equals(placed, s.placed)
                    && appliedCommands.equals(s.appliedCommands) && List.copyOf(refusedCommands).equals(List.copyOf(s.refusedCommands))
                    && Objects.equals(timer, s.timer);
        }

        @Override
        public int hashCode() {
            return Objects.hash(orderId, version, status, placed, appliedCommands, timer);
        }

        @Override
        public String toString() {
            return "OrderState[" + orderId + " v" + version + " " + status + " placed=" + placed + " applied=" + appliedCommands
                    + " refused=" + refusedCommands.size() + " timer=" + timer + "]";
        }
    }
}
