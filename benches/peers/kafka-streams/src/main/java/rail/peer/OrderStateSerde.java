package rail.peer;

import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serializer;
import rail.peer.Model.OrderLine;
import rail.peer.Model.OrderState;
import rail.peer.Model.OrderStatus;
import rail.peer.Model.PlaceOrder;
import rail.peer.Model.Timer;
import rail.peer.Model.TimerKind;

/**
 * The order store's value serde (the store and its changelog): a compact binary layout, the
 * Java counterpart of dev-materiels' {@code state/src/encoding.rs} (postcard). Not the same bytes
 * as Rust's (each side reads only its own changelog), the same idea: a format byte, then the
 * fields in declaration order, integers as unsigned LEB128 varints, strings as a varint length
 * and their UTF-8 bytes.
 *
 * <pre>
 * 0x01                         format
 * string   order_id
 * varint   version
 * u8       status              0 = none, else OrderStatus.code (1..6)
 * u8       placed?             0 = none, 1 = then: string wagon_id, string requested_by,
 *                              varint line count, per line: string sku, varint quantity
 * varint   applied count, then the ids (strings)
 * varint   refused count, then the ids (strings), oldest first
 * u8       timer               0 = none, 1 = Prepare, 2 = Ship; then varint due_ms
 * </pre>
 */
final class OrderStateSerde implements Serde<OrderState>, Serializer<OrderState>, Deserializer<OrderState> {
    static final byte FORMAT_V1 = 0x01;

    @Override
    public Serializer<OrderState> serializer() {
        return this;
    }

    @Override
    public Deserializer<OrderState> deserializer() {
        return this;
    }

    @Override
    public byte[] serialize(String topic, OrderState state) {
        return state == null ? null : encode(state);
    }

    @Override
    public OrderState deserialize(String topic, byte[] bytes) {
        return bytes == null ? null : decode(bytes);
    }

    @Override
    public void configure(Map<String, ?> configs, boolean isKey) {}

    @Override
    public void close() {}

    static byte[] encode(OrderState s) {
        Writer w = new Writer(64 + 24 * (s.appliedCommands.size() + s.refusedCommands.size()));
        w.u8(FORMAT_V1);
        w.string(s.orderId);
        w.varint(s.version);
        w.u8(s.status == null ? 0 : s.status.code);
        if (s.placed == null) {
            w.u8(0);
        } else {
            w.u8(1);
            w.string(s.placed.wagonId());
            w.string(s.placed.requestedBy());
            w.varint(s.placed.lines().size());
            for (OrderLine line : s.placed.lines()) {
                w.string(line.sku());
                w.varint(line.quantity());
            }
        }
        w.varint(s.appliedCommands.size());
        for (String id : s.appliedCommands) w.string(id);
        w.varint(s.refusedCommands.size());
        for (String id : s.refusedCommands) w.string(id);
        if (s.timer == null) {
            w.u8(0);
        } else {
            w.u8(s.timer.kind() == TimerKind.Prepare ? 1 : 2);
            w.varint(s.timer.dueMs());
        }
        return w.toByteArray();
    }

    static OrderState decode(byte[] bytes) {
        Reader r = new Reader(bytes);
        int format = r.u8();
        if (format != FORMAT_V1) throw new SerializationException("unknown order state format byte " + format);
        String orderId = r.string();
        long version = r.varint();
        int status = r.u8();
        PlaceOrder placed = null;
        if (r.u8() == 1) {
            String wagonId = r.string();
            String requestedBy = r.string();
            int count = r.count();
            List<OrderLine> lines = new ArrayList<>(count);
            for (int i = 0; i < count; i++) lines.add(new OrderLine(r.string(), r.varint()));
            placed = new PlaceOrder(wagonId, requestedBy, lines);
        }
        int appliedCount = r.count();
        List<String> applied = new ArrayList<>(appliedCount + 1);
        for (int i = 0; i < appliedCount; i++) applied.add(r.string());
        int refusedCount = r.count();
        ArrayDeque<String> refused = new ArrayDeque<>(Math.max(refusedCount + 1, 4));
        for (int i = 0; i < refusedCount; i++) refused.addLast(r.string());
        int timerKind = r.u8();
        Timer timer = switch (timerKind) {
            case 0 -> null;
            case 1 -> new Timer(TimerKind.Prepare, r.varint());
            case 2 -> new Timer(TimerKind.Ship, r.varint());
            default -> throw new SerializationException("unknown timer kind " + timerKind);
        };
        if (!r.atEnd()) throw new SerializationException("trailing bytes after an order state");
        return new OrderState(orderId, version, status == 0 ? null : OrderStatus.fromCode(status), placed, applied, refused, timer);
    }

    /** A growable byte buffer: cheaper than DataOutputStream over a ByteArrayOutputStream. */
    private static final class Writer {
        private byte[] buf;
        private int len;

        Writer(int capacity) {
            buf = new byte[capacity];
        }

        private void ensure(int more) {
            if (len + more > buf.length) buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + more));
        }

        void u8(int b) {
            ensure(1);
            buf[len++] = (byte) b;
        }

        /** Unsigned LEB128 of the 64 bits of {@code v}. */
        void varint(long v) {
            ensure(10);
            while ((v & ~0x7FL) != 0) {
                buf[len++] = (byte) ((v & 0x7F) | 0x80);
                v >>>= 7;
            }
            buf[len++] = (byte) v;
        }

        void string(String s) {
            byte[] utf8 = s.getBytes(StandardCharsets.UTF_8);
            varint(utf8.length);
            ensure(utf8.length);
            System.arraycopy(utf8, 0, buf, len, utf8.length);
            len += utf8.length;
        }

        byte[] toByteArray() {
            return Arrays.copyOf(buf, len);
        }
    }

    private static final class Reader {
        private final byte[] buf;
        private int pos;

        Reader(byte[] buf) {
            this.buf = buf;
        }

        int u8() {
            if (pos >= buf.length) throw new SerializationException("truncated order state");
            return buf[pos++] & 0xFF;
        }

        long varint() {
            long v = 0;
            for (int shift = 0; shift < 64; shift += 7) {
                int b = u8();
                v |= (long) (b & 0x7F) << shift;
                if ((b & 0x80) == 0) return v;
            }
            throw new SerializationException("varint longer than 64 bits in an order state");
        }

        int count() {
            long n = varint();
            if (n < 0 || n > buf.length - pos) throw new SerializationException("bad count " + n + " in an order state");
            return (int) n;
        }

        String string() {
            int n = count();
            String s = new String(buf, pos, n, StandardCharsets.UTF_8);
            pos += n;
            return s;
        }

        boolean atEnd() {
            return pos == buf.length;
        }
    }
}
