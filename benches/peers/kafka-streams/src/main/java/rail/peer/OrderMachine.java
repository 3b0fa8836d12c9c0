package rail.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.Set;

/**
 * dev-materiels' state machine (state/src/order.rs), in Java, on the same JSON: commands as on
 * `orders`, updates as on `order-updates`. The state is a JSON object like the Rust store's.
 */
final class OrderMachine {
    static final ObjectMapper JSON = new ObjectMapper();
    private static final JsonNodeFactory NODES = JsonNodeFactory.instance;
    static final int SCHEMA_VERSION = 1;
    static final int MAX_LINES = 50;
    static final int MAX_ID_LEN = 128;
    static final int REMEMBERED_COMMANDS = 256;
    static final Set<String> CATALOGUE = Set.of(
            "BRAKE-PAD-UIC", "BRAKE-DISC-640", "WHEELSET-BA004", "AXLE-BOX-BEARING", "BOGIE-SPRING-Y32",
            "COUPLER-UIC-520", "BUFFER-105MM", "PANTOGRAPH-STRIP", "DOOR-SEAL-1800", "WINDOW-PANE-LAM",
            "BERTH-MATTRESS-80", "BERTH-LADDER", "LINEN-SET-SINGLE", "LINEN-SET-DOUBLE", "WASHBASIN-TAP",
            "WC-VACUUM-VALVE", "HVAC-FILTER-G4", "LED-READING-LAMP", "BATTERY-110V-NICD", "FIRE-EXTINGUISHER-6L");

    private final long prepareAfterMs;
    private final long shipAfterMs;

    OrderMachine(long prepareAfterMs, long shipAfterMs) {
        this.prepareAfterMs = prepareAfterMs;
        this.shipAfterMs = shipAfterMs;
    }

    /** A new state and the update to emit; or nothing. */
    record Decision(ObjectNode state, ObjectNode update) {}

    /** Why a record is not a valid command, or null if it is one. */
    static String invalid(String key, JsonNode c) {
        if (c == null || !c.isObject()) return "malformed: not a JSON object";
        if (c.path("schema_version").asInt(-1) != SCHEMA_VERSION) return "unsupported schema version";
        for (String field : new String[] {"command_id", "order_id"}) {
            JsonNode v = c.get(field);
            if (v == null || !v.isTextual()) return "malformed: missing field " + field;
            if (v.asText().isBlank()) return "empty field " + field;
            if (v.asText().length() > MAX_ID_LEN) return "field too long: " + field;
        }
        if (!c.path("issued_at_ms").canConvertToLong()) return "malformed: missing field issued_at_ms";
        String type = c.path("command").path("type").asText("");
        if (!Set.of("PlaceOrder", "CancelOrder", "ConfirmDelivery").contains(type)) return "malformed: unknown command " + type;
        if (key != null && !key.equals(c.get("order_id").asText())) return "key mismatch";
        return null;
    }

    static ObjectNode newState(String orderId) {
        ObjectNode s = NODES.objectNode();
        s.put("order_id", orderId);
        s.put("version", 0);
        s.putNull("status");
        s.putNull("placed");
        s.putArray("seen_commands");
        s.putNull("timer");
        return s;
    }

    private static boolean hasSeen(ObjectNode state, String commandId) {
        for (JsonNode id : state.get("seen_commands")) {
            if (id.asText().equals(commandId)) return true;
        }
        return false;
    }

    private static String checkOrder(JsonNode place) {
        JsonNode lines = place.path("lines");
        if (!lines.isArray() || lines.isEmpty()) return "order has no lines";
        if (lines.size() > MAX_LINES) return "order has " + lines.size() + " lines, at most " + MAX_LINES + " are allowed";
        int index = 0;
        for (JsonNode line : lines) {
            index++;
            long q = line.path("quantity").asLong();
            String sku = line.path("sku").asText();
            if (q < 1 || q > 999) return "line " + index + " (" + sku + "): quantity " + q + " is outside 1..=999";
            if (!CATALOGUE.contains(sku)) return "line " + index + ": unknown SKU \"" + sku + "\"";
        }
        return null;
    }

    private static String statusRefusal(String status, String type) {
        if (type.equals("PlaceOrder")) return null;
        if (status == null) return "unknown order";
        if (type.equals("CancelOrder")) {
            return status.equals("Accepted") || status.equals("InPreparation") ? null : "cannot cancel an order that is " + status;
        }
        return status.equals("Shipped") ? null : "cannot confirm delivery of an order that is " + status;
    }

    /** Runs one command; {@code state} is null for an order never seen. */
    Decision decide(ObjectNode state, JsonNode command, long nowMs) {
        String orderId = command.get("order_id").asText();
        ObjectNode current = state == null ? newState(orderId) : state.deepCopy();
        String commandId = command.get("command_id").asText();
        if (hasSeen(current, commandId)) return null;
        String status = current.get("status").isNull() ? null : current.get("status").asText();
        JsonNode body = command.get("command");
        String type = body.get("type").asText();
        switch (type) {
            case "PlaceOrder": {
                ObjectNode place = body.deepCopy();
                place.remove("type");
                if (status == null) {
                    String reason = checkOrder(place);
                    current.set("placed", place);
                    if (reason == null) {
                        ObjectNode timer = NODES.objectNode().put("kind", "Prepare").put("due_ms", nowMs + prepareAfterMs);
                        current.set("timer", timer);
                        return apply(current, "Applied", "Accepted", null, "Command", commandId, nowMs);
                    }
                    return apply(current, "Applied", "Rejected", reason, "Command", commandId, nowMs);
                }
                if (current.get("placed").equals(place)) return null;
                return apply(current, "Refused", null, "order already placed with different content", "Command", commandId, nowMs);
            }
            case "CancelOrder": {
                String refusal = statusRefusal(status, type);
                if (refusal != null) return apply(current, "Refused", null, refusal, "Command", commandId, nowMs);
                current.putNull("timer");
                return apply(current, "Applied", "Cancelled", body.path("reason").asText(), "Command", commandId, nowMs);
            }
            default: {
                String refusal = statusRefusal(status, type);
                if (refusal != null) return apply(current, "Refused", null, refusal, "Command", commandId, nowMs);
                return apply(current, "Applied", "Delivered", null, "Command", commandId, nowMs);
            }
        }
    }

    /** Fires the order's timer if it is due. */
    Decision fire(ObjectNode state, long nowMs) {
        JsonNode timer = state.get("timer");
        if (timer == null || timer.isNull() || timer.get("due_ms").asLong() > nowMs) return null;
        ObjectNode current = state.deepCopy();
        String status = current.get("status").asText();
        if (timer.get("kind").asText().equals("Prepare") && status.equals("Accepted")) {
            current.set("timer", NODES.objectNode().put("kind", "Ship").put("due_ms", nowMs + shipAfterMs));
            return apply(current, "Applied", "InPreparation", null, "PrepareTimer", null, nowMs);
        }
        if (timer.get("kind").asText().equals("Ship") && status.equals("InPreparation")) {
            current.putNull("timer");
            return apply(current, "Applied", "Shipped", null, "ShipTimer", null, nowMs);
        }
        return null;
    }

    private static Decision apply(
            ObjectNode state, String outcome, String newStatus, String reason, String trigger, String commandId, long nowMs) {
        JsonNode previous = state.get("status");
        if (newStatus != null) state.put("status", newStatus);
        if (commandId != null) {
            ArrayNode seen = (ArrayNode) state.get("seen_commands");
            if (seen.size() >= REMEMBERED_COMMANDS) seen.remove(0);
            seen.add(commandId);
        }
        long version = state.get("version").asLong() + 1;
        state.put("version", version);
        ObjectNode update = NODES.objectNode();
        update.put("schema_version", SCHEMA_VERSION);
        update.put("order_id", state.get("order_id").asText());
        update.put("version", version);
        update.set("status", state.get("status"));
        update.set("previous_status", previous);
        update.put("outcome", outcome);
        if (reason == null) update.putNull("reason"); else update.put("reason", reason);
        update.put("trigger", trigger);
        if (commandId == null) update.putNull("command_id"); else update.put("command_id", commandId);
        update.put("timestamp_ms", nowMs);
        return new Decision(state, update);
    }
}
