package rail.peer;

import java.util.Set;
import rail.peer.Model.CancelOrder;
import rail.peer.Model.Command;
import rail.peer.Model.CommandEnvelope;
import rail.peer.Model.OrderLine;
import rail.peer.Model.OrderState;
import rail.peer.Model.OrderStatus;
import rail.peer.Model.OrderUpdate;
import rail.peer.Model.Outcome;
import rail.peer.Model.PlaceOrder;
import rail.peer.Model.Timer;
import rail.peer.Model.TimerKind;
import rail.peer.Model.Trigger;

/**
 * dev-materiels' state machine, {@code state/src/order/mod.rs}, in Java: the same checks in the same
 * order, the same reasons word for word, the same versions. Pure: no clock, no I/O; the caller
 * passes the processing time in.
 */
final class OrderMachine {
    /** {@code SCHEMA_VERSION}. */
    static final int SCHEMA_VERSION = 1;
    /** {@code MAX_LINES}. */
    static final int MAX_LINES = 50;
    /** {@code QUANTITY_RANGE}: 1..=999. */
    static final long MIN_QUANTITY = 1;
    static final long MAX_QUANTITY = 999;
    /** {@code REMEMBERED_REFUSALS}: how many refused command ids an order remembers. */
    static final int REMEMBERED_REFUSALS = 256;
    /** {@code MAX_ID_LEN}, in UTF-8 bytes. */
    static final int MAX_ID_LEN = 128;
    /** {@code catalogue::DEFAULT_SKUS}. */
    static final Set<String> DEFAULT_CATALOGUE = Set.of(
            "BRAKE-PAD-UIC", "BRAKE-DISC-640", "WHEELSET-BA004", "AXLE-BOX-BEARING", "BOGIE-SPRING-Y32",
            "COUPLER-UIC-520", "BUFFER-105MM", "PANTOGRAPH-STRIP", "DOOR-SEAL-1800", "WINDOW-PANE-LAM",
            "BERTH-MATTRESS-80", "BERTH-LADDER", "LINEN-SET-SINGLE", "LINEN-SET-DOUBLE", "WASHBASIN-TAP",
            "WC-VACUUM-VALVE", "HVAC-FILTER-G4", "LED-READING-LAMP", "BATTERY-110V-NICD", "FIRE-EXTINGUISHER-6L");

    private final Set<String> catalogue;
    private final long prepareAfterMs;
    private final long shipAfterMs;

    /** {@code Rules}, with the default catalogue. */
    OrderMachine(long prepareAfterMs, long shipAfterMs) {
        this(DEFAULT_CATALOGUE, prepareAfterMs, shipAfterMs);
    }

    OrderMachine(Set<String> catalogue, long prepareAfterMs, long shipAfterMs) {
        this.catalogue = catalogue;
        this.prepareAfterMs = prepareAfterMs;
        this.shipAfterMs = shipAfterMs;
    }

    /**
     * {@code decide_in_place}: runs one command on {@code state} (for an order never seen, a
     * {@code new OrderState(orderId)}). Returns the update, {@code state} having become the new
     * state; or null, {@code state} being left exactly as it was.
     */
    OrderUpdate decideInPlace(OrderState state, CommandEnvelope envelope, long nowMs) {
        if (state.hasSeen(envelope.commandId())) return null;
        OrderStatus status = state.status;
        Command command = envelope.command();
        Step step;
        if (command instanceof PlaceOrder place) {
            if (status == null) {
                String reason = checkOrder(place);
                step = reason == null
                        ? Step.to(OrderStatus.Accepted, null)
                                .timer(new Timer(TimerKind.Prepare, saturatingAdd(nowMs, prepareAfterMs)))
                                .placed(place)
                        : Step.to(OrderStatus.Rejected, reason).placed(place);
            } else {
                // The same order placed again under a new command id: a client retry.
                if (place.equals(state.placed)) return null;
                step = Step.refuse("order already placed with different content");
            }
        } else if (command instanceof CancelOrder cancel) {
            String refusal = statusRefusal(status, command);
            step = refusal != null ? Step.refuse(refusal) : Step.to(OrderStatus.Cancelled, cancel.reason()).clearTimer();
        } else {
            String refusal = statusRefusal(status, command);
            step = refusal != null ? Step.refuse(refusal) : Step.to(OrderStatus.Delivered, null);
        }
        return step.apply(state, Trigger.Command, envelope.commandId(), nowMs);
    }

    /** {@code status_refusal}: why {@code command} does not fit an order in {@code status}, or null. */
    static String statusRefusal(OrderStatus status, Command command) {
        if (command instanceof PlaceOrder) return null;
        if (status == null) return "unknown order";
        if (command instanceof CancelOrder) {
            return status == OrderStatus.Accepted || status == OrderStatus.InPreparation
                    ? null
                    : "cannot cancel an order that is " + status.name();
        }
        return status == OrderStatus.Shipped ? null : "cannot confirm delivery of an order that is " + status.name();
    }

    /**
     * {@code fire_timer_in_place}: fires the order's timer if it is due and still applies. Returns
     * the update, {@code state} having become the new state; or null, {@code state} unchanged.
     */
    OrderUpdate fireTimerInPlace(OrderState state, long nowMs) {
        Timer timer = state.timer;
        if (timer == null || Long.compareUnsigned(timer.dueMs(), nowMs) > 0) return null;
        Step step;
        if (timer.kind() == TimerKind.Prepare && state.status == OrderStatus.Accepted) {
            step = Step.to(OrderStatus.InPreparation, null).timer(new Timer(TimerKind.Ship, saturatingAdd(nowMs, shipAfterMs)));
        } else if (timer.kind() == TimerKind.Ship && state.status == OrderStatus.InPreparation) {
            step = Step.to(OrderStatus.Shipped, null).clearTimer();
        } else {
            // A timer left behind by a status that moved on: never happens, kept total as in Rust.
            return null;
        }
        return step.apply(state, timer.kind().trigger, null, nowMs);
    }

    /** {@code check_order}: the business checks of a new order; the reason it fails them, or null. */
    String checkOrder(PlaceOrder place) {
        int count = place.lines().size();
        if (count == 0) return "order has no lines";
        if (count > MAX_LINES) return "order has " + count + " lines, at most " + MAX_LINES + " are allowed";
        for (int i = 0; i < count; i++) {
            OrderLine line = place.lines().get(i);
            if (line.quantity() < MIN_QUANTITY || line.quantity() > MAX_QUANTITY) {
                return "line " + (i + 1) + " (" + line.sku() + "): quantity " + line.quantity() + " is outside "
                        + MIN_QUANTITY + "..=" + MAX_QUANTITY;
            }
            if (!catalogue.contains(line.sku())) {
                return "line " + (i + 1) + ": unknown SKU " + RustDebug.string(line.sku());
            }
        }
        return null;
    }

    /** {@code u64::saturating_add}, on the 64 bits of {@code a} and {@code b} read as unsigned. */
    static long saturatingAdd(long a, long b) {
        long sum = a + b;
        return Long.compareUnsigned(sum, a) < 0 ? -1L /* u64::MAX */ : sum;
    }

    /** {@code Step}: one step of the machine, before it is stamped with a version. */
    private static final class Step {
        final Outcome outcome;
        final OrderStatus status;
        final String reason;
        boolean setsTimer;
        Timer timer;
        PlaceOrder placed;

        private Step(Outcome outcome, OrderStatus status, String reason) {
            this.outcome = outcome;
            this.status = status;
            this.reason = reason;
        }

        static Step to(OrderStatus status, String reason) {
            return new Step(Outcome.Applied, status, reason);
        }

        static Step refuse(String reason) {
            return new Step(Outcome.Refused, null, reason);
        }

        Step timer(Timer timer) {
            this.setsTimer = true;
            this.timer = timer;
            return this;
        }

        Step clearTimer() {
            this.setsTimer = true;
            this.timer = null;
            return this;
        }

        Step placed(PlaceOrder place) {
            this.placed = place;
            return this;
        }

        /** {@code Step::apply}: changes {@code state} and returns the update with its next version. */
        OrderUpdate apply(OrderState state, Trigger trigger, String commandId, long nowMs) {
            OrderStatus previousStatus = state.status;
            if (status != null) state.status = status;
            if (setsTimer) state.timer = timer;
            if (placed != null) state.placed = placed;
            if (commandId != null) {
                if (outcome == Outcome.Applied) {
                    state.appliedCommands.add(commandId);
                } else {
                    if (state.refusedCommands.size() >= REMEMBERED_REFUSALS) state.refusedCommands.removeFirst();
                    state.refusedCommands.addLast(commandId);
                }
            }
            state.version += 1;
            return new OrderUpdate(SCHEMA_VERSION, state.orderId, state.version, state.status, previousStatus, outcome, reason,
                    trigger, commandId, nowMs);
        }
    }
}
