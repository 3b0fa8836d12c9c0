package rail.peer;

import com.fasterxml.jackson.core.JsonLocation;
import com.fasterxml.jackson.core.JsonParseException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.DeserializationContext;
import com.fasterxml.jackson.databind.deser.std.StdDeserializer;
import java.io.IOException;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import rail.peer.Model.CancelOrder;
import rail.peer.Model.Command;
import rail.peer.Model.CommandEnvelope;
import rail.peer.Model.ConfirmDelivery;
import rail.peer.Model.OrderLine;
import rail.peer.Model.PlaceOrder;

/**
 * Commands as read from {@code orders}: Rust's {@code decode_command} and
 * {@code validate_envelope}. A record that is not a valid command is an {@link InvalidCommand}
 * and goes to the dead-letter topic; the set of records accepted is exactly serde_json's.
 *
 * <p>Why hand-written Jackson deserializers rather than annotated records: the Rust types are
 * read by serde's derived code, whose rules Jackson's bean deserializer does not follow. serde
 * refuses unknown fields ({@code deny_unknown_fields} on the envelope, the commands and the order
 * lines) and duplicate fields; it takes no string for a number nor a number for a string, no
 * float for an integer, no negative number (nor {@code -0}, which serde_json reads as a float) for
 * an unsigned one, and the whole {@code u32} range (beyond a Java {@code int}); and it also reads
 * a struct from a JSON array of its fields in declaration order (an internally tagged enum from
 * an array whose first element is the tag). The deserializers below follow those rules on
 * Jackson's token stream, which is also the fastest way Jackson reads.
 */
final class CommandDecoder {
    private CommandDecoder() {}

    /** {@code InvalidCommand}: why a record did not reach the state machine; {@link #kind} as Rust's. */
    static final class InvalidCommand extends Exception {
        private static final long serialVersionUID = 1L;
        final String kind;

        InvalidCommand(String kind, String message) {
            super(message, null, false, false);
            this.kind = kind;
        }
    }

    /**
     * {@code decode_command}: decodes and checks a record of {@code orders}. {@code key} is the
     * record key, null when the record has none: when present it must be the order id's bytes.
     */
    static CommandEnvelope decode(byte[] key, byte[] value) throws InvalidCommand {
        if (value == null || allAsciiWhitespace(value)) throw new InvalidCommand("empty", "empty message");
        CommandEnvelope envelope;
        try {
            String notText = notJsonText(value);
            if (notText != null) throw new InvalidCommand("malformed", "not a command: " + notText);
            envelope = Json.COMMAND_READER.readValue(value);
            if (envelope == null) throw new InvalidCommand("malformed", "not a command: invalid type: null, expected struct CommandEnvelope");
        } catch (IOException | InvalidCommand e) {
            // Say "wrong version" rather than "missing field" when the version is the problem.
            BigInteger version = probeSchemaVersion(value);
            if (version != null && !version.equals(BigInteger.ONE)) throw unsupportedVersion(version);
            if (e instanceof InvalidCommand invalid) throw invalid;
            throw new InvalidCommand("malformed", "not a command: " + describe(e));
        }
        validateEnvelope(envelope);
        if (key != null && !Arrays.equals(key, envelope.orderId().getBytes(StandardCharsets.UTF_8))) {
            throw new InvalidCommand("key-mismatch", "message key " + RustDebug.string(new String(key, StandardCharsets.UTF_8))
                    + " does not match order id " + RustDebug.string(envelope.orderId()));
        }
        return envelope;
    }

    /** A parse error as serde_json words it: the message, then where ("at line 1 column 17"). */
    private static String describe(Exception e) {
        if (!(e instanceof JsonProcessingException j)) return e.getMessage();
        JsonLocation at = j.getLocation();
        return at == null ? j.getOriginalMessage() : j.getOriginalMessage() + " at line " + at.getLineNr() + " column " + at.getColumnNr();
    }

    /** {@code validate_envelope}: the checks a decoded command must pass. */
    static void validateEnvelope(CommandEnvelope envelope) throws InvalidCommand {
        if (envelope.schemaVersion() != OrderMachine.SCHEMA_VERSION) throw unsupportedVersion(BigInteger.valueOf(envelope.schemaVersion()));
        checkId("command_id", envelope.commandId());
        checkId("order_id", envelope.orderId());
    }

    private static void checkId(String field, String text) throws InvalidCommand {
        if (isRustBlank(text)) throw new InvalidCommand("empty-field", field + " is empty");
        if (utf8Length(text) > OrderMachine.MAX_ID_LEN) {
            throw new InvalidCommand("field-too-long", field + " is longer than " + OrderMachine.MAX_ID_LEN + " bytes");
        }
    }

    private static InvalidCommand unsupportedVersion(BigInteger found) {
        return new InvalidCommand("unsupported-schema-version",
                "unsupported schema version " + found + " (this build reads version " + OrderMachine.SCHEMA_VERSION + ")");
    }

    /** {@code <[u8]>::iter().all(u8::is_ascii_whitespace)}: space, \t, \n, \x0C, \r. */
    private static boolean allAsciiWhitespace(byte[] value) {
        for (byte b : value) {
            if (b != ' ' && b != '\t' && b != '\n' && b != 0x0C && b != '\r') return false;
        }
        return true;
    }

    /** {@code str::trim().is_empty()}: every character is Unicode White_Space (not Java's isWhitespace). */
    static boolean isRustBlank(String s) {
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            boolean white = (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680
                    || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
            if (!white) return false;
        }
        return true;
    }

    /** {@code str::len}: the length in UTF-8 bytes. */
    static int utf8Length(String s) {
        int bytes = 0;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c < 0x80) bytes += 1;
            else if (c < 0x800) bytes += 2;
            else if (Character.isSurrogate(c)) bytes += 2; // a pair: 4 bytes in all
            else bytes += 3;
        }
        return bytes;
    }

    /**
     * What Jackson would read differently from serde_json before it parses anything: input that is
     * not valid UTF-8 (serde_json refuses it, in strings and anywhere else), a byte-order mark
     * (Jackson skips it) and NUL bytes (Jackson may take the input for UTF-16 or UTF-32; they are
     * never valid in JSON text). Null when the bytes may be read as UTF-8 JSON.
     */
    private static String notJsonText(byte[] v) {
        if (v.length >= 3 && (v[0] & 0xFF) == 0xEF && (v[1] & 0xFF) == 0xBB && (v[2] & 0xFF) == 0xBF) {
            return "expected value at line 1 column 1 (a byte-order mark)";
        }
        int i = 0;
        while (i < v.length) {
            int b = v[i] & 0xFF;
            if (b == 0) return "a NUL byte at offset " + i;
            if (b < 0x80) {
                i++;
                continue;
            }
            int need;
            int lo = 0x80;
            int hi = 0xBF;
            if (b >= 0xC2 && b <= 0xDF) need = 1;
            else if (b == 0xE0) { need = 2; lo = 0xA0; }
            else if (b >= 0xE1 && b <= 0xEC || b == 0xEE || b == 0xEF) need = 2;
            else if (b == 0xED) { need = 2; hi = 0x9F; }
            else if (b == 0xF0) { need = 3; lo = 0x90; }
            else if (b >= 0xF1 && b <= 0xF3) need = 3;
            else if (b == 0xF4) { need = 3; hi = 0x8F; }
            else return "invalid UTF-8 at offset " + i;
            if (i + need >= v.length) return "invalid UTF-8 at offset " + i;
            int second = v[i + 1] & 0xFF;
            if (second < lo || second > hi) return "invalid UTF-8 at offset " + i;
            for (int k = 2; k <= need; k++) {
                int next = v[i + k] & 0xFF;
                if (next < 0x80 || next > 0xBF) return "invalid UTF-8 at offset " + i;
            }
            i += need + 1;
        }
        return null;
    }

    // ---------------------------------------------------------------------------------------
    // serde's derived deserializers, on Jackson's token stream.

    /** One field's reader: the parser is on the field value's first token, and ends on its last. */
    @FunctionalInterface
    private interface FieldReader {
        Object read(JsonParser p) throws IOException;
    }

    private static JsonParseException fail(JsonParser p, String message) {
        return new JsonParseException(p, message);
    }

    /**
     * A derived {@code Deserialize} of a struct with {@code deny_unknown_fields}: a JSON object
     * with exactly these fields, each once, in any order; or a JSON array of their values in
     * declaration order, of exactly that length. Returns the values in declaration order.
     */
    private static Object[] struct(JsonParser p, String what, String[] names, FieldReader[] readers) throws IOException {
        Object[] values = new Object[names.length];
        JsonToken token = p.currentToken();
        if (token == JsonToken.START_OBJECT) {
            for (String name = p.nextFieldName(); name != null; name = p.nextFieldName()) {
                int i = indexOf(names, name);
                if (i < 0) throw fail(p, "unknown field `" + name + "` in " + what);
                if (values[i] != null) throw fail(p, "duplicate field `" + name + "`");
                p.nextToken();
                values[i] = readers[i].read(p);
            }
            for (int i = 0; i < names.length; i++) {
                if (values[i] == null) throw fail(p, "missing field `" + names[i] + "`");
            }
        } else if (token == JsonToken.START_ARRAY) {
            for (int i = 0; i < names.length; i++) {
                if (p.nextToken() == JsonToken.END_ARRAY) throw fail(p, "invalid length " + i + ", expected " + what);
                values[i] = readers[i].read(p);
            }
            if (p.nextToken() != JsonToken.END_ARRAY) throw fail(p, "trailing elements in " + what);
        } else {
            throw fail(p, "invalid type: " + token + ", expected " + what);
        }
        return values;
    }

    private static int indexOf(String[] names, String name) {
        for (int i = 0; i < names.length; i++) {
            if (names[i].equals(name)) return i;
        }
        return -1;
    }

    /** {@code String}: a JSON string only, with no lone surrogate (serde_json refuses a lone "backslash-u d800" escape). */
    private static String string(JsonParser p) throws IOException {
        if (p.currentToken() != JsonToken.VALUE_STRING) throw fail(p, "invalid type: " + p.currentToken() + ", expected a string");
        String s = p.getText();
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1))) {
                i++;
            } else if (Character.isSurrogate(c)) {
                throw fail(p, "lone surrogate in hex escape");
            }
        }
        return s;
    }

    /**
     * {@code u32} ({@code bits} 32) or {@code u64} ({@code bits} 64): a JSON integer, not negative
     * (serde_json reads {@code -0} as a float), within range. A {@code u64} beyond {@code Long.MAX_VALUE}
     * is kept as its 64 bits.
     */
    private static long unsigned(JsonParser p, int bits) throws IOException {
        if (p.currentToken() != JsonToken.VALUE_NUMBER_INT) {
            throw fail(p, "invalid type: " + p.currentToken() + ", expected u" + bits);
        }
        if (p.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
            BigInteger big = p.getBigIntegerValue();
            if (big.signum() < 0 || big.bitLength() > bits) throw fail(p, "invalid value: integer `" + big + "`, expected u" + bits);
            return big.longValue();
        }
        long v = p.getLongValue();
        if (v < 0 || (bits == 32 && v > 0xFFFF_FFFFL)) throw fail(p, "invalid value: integer `" + v + "`, expected u" + bits);
        if (v == 0 && p.getText().startsWith("-")) throw fail(p, "invalid type: floating point `-0.0`, expected u" + bits);
        return v;
    }

    private static final String[] LINE_FIELDS = {"sku", "quantity"};
    private static final FieldReader[] LINE_READERS = {CommandDecoder::string, p -> unsigned(p, 32)};

    /** {@code OrderLine}. */
    private static OrderLine orderLine(JsonParser p) throws IOException {
        Object[] v = struct(p, "struct OrderLine", LINE_FIELDS, LINE_READERS);
        return new OrderLine((String) v[0], (Long) v[1]);
    }

    /** {@code Vec<OrderLine>}: a JSON array only. */
    private static List<OrderLine> lines(JsonParser p) throws IOException {
        if (p.currentToken() != JsonToken.START_ARRAY) throw fail(p, "invalid type: " + p.currentToken() + ", expected a sequence");
        List<OrderLine> lines = new ArrayList<>(4);
        for (JsonToken t = p.nextToken(); t != JsonToken.END_ARRAY; t = p.nextToken()) {
            if (t == null) throw fail(p, "EOF while parsing a list");
            lines.add(orderLine(p));
        }
        return lines;
    }

    private enum Variant { PlaceOrder, CancelOrder, ConfirmDelivery }

    /** The tag of {@code Command}: a JSON string naming a variant. */
    private static Variant variant(JsonParser p) throws IOException {
        if (p.currentToken() != JsonToken.VALUE_STRING) throw fail(p, "invalid type: " + p.currentToken() + ", expected variant identifier");
        return switch (p.getText()) {
            case "PlaceOrder" -> Variant.PlaceOrder;
            case "CancelOrder" -> Variant.CancelOrder;
            case "ConfirmDelivery" -> Variant.ConfirmDelivery;
            default -> throw fail(p, "unknown variant `" + p.getText() + "`, expected one of `PlaceOrder`, `CancelOrder`, `ConfirmDelivery`");
        };
    }

    /**
     * {@code Command}, {@code #[serde(tag = "type", deny_unknown_fields)]}: an object with
     * {@code "type"} (anywhere) and exactly the fields of that variant; or an array of the tag and
     * then the variant's fields in order. Every field of every variant is read with its type:
     * a field foreign to the variant is refused anyway.
     */
    private static Command command(JsonParser p) throws IOException {
        JsonToken token = p.currentToken();
        Variant tag = null;
        String wagonId = null;
        String requestedBy = null;
        List<OrderLine> lines = null;
        String reason = null;
        if (token == JsonToken.START_OBJECT) {
            for (String name = p.nextFieldName(); name != null; name = p.nextFieldName()) {
                p.nextToken();
                switch (name) {
                    case "type" -> {
                        if (tag != null) throw fail(p, "duplicate field `type`");
                        tag = variant(p);
                    }
                    case "wagon_id" -> {
                        if (wagonId != null) throw fail(p, "duplicate field `wagon_id`");
                        wagonId = string(p);
                    }
                    case "requested_by" -> {
                        if (requestedBy != null) throw fail(p, "duplicate field `requested_by`");
                        requestedBy = string(p);
                    }
                    case "lines" -> {
                        if (lines != null) throw fail(p, "duplicate field `lines`");
                        lines = lines(p);
                    }
                    case "reason" -> {
                        if (reason != null) throw fail(p, "duplicate field `reason`");
                        reason = string(p);
                    }
                    default -> throw fail(p, "unknown field `" + name + "`");
                }
            }
            if (tag == null) throw fail(p, "missing field `type`");
            switch (tag) {
                case PlaceOrder -> {
                    if (reason != null) throw fail(p, "unknown field `reason`, expected one of `wagon_id`, `requested_by`, `lines`");
                    if (wagonId == null) throw fail(p, "missing field `wagon_id`");
                    if (requestedBy == null) throw fail(p, "missing field `requested_by`");
                    if (lines == null) throw fail(p, "missing field `lines`");
                    return new PlaceOrder(wagonId, requestedBy, lines);
                }
                case CancelOrder -> {
                    if (wagonId != null || requestedBy != null || lines != null) throw fail(p, "unknown field, expected `reason`");
                    if (reason == null) throw fail(p, "missing field `reason`");
                    return new CancelOrder(reason);
                }
                default -> {
                    if (wagonId != null || requestedBy != null || lines != null || reason != null) {
                        throw fail(p, "unknown field, there are no fields");
                    }
                    return new ConfirmDelivery();
                }
            }
        } else if (token == JsonToken.START_ARRAY) {
            if (p.nextToken() == JsonToken.END_ARRAY) throw fail(p, "missing field `type`");
            tag = variant(p);
            Command command;
            switch (tag) {
                case PlaceOrder -> {
                    wagonId = (String) element(p, CommandDecoder::string, 0, "struct PlaceOrder with 3 elements");
                    requestedBy = (String) element(p, CommandDecoder::string, 1, "struct PlaceOrder with 3 elements");
                    @SuppressWarnings("unchecked")
                    List<OrderLine> read = (List<OrderLine>) element(p, CommandDecoder::lines, 2, "struct PlaceOrder with 3 elements");
                    command = new PlaceOrder(wagonId, requestedBy, read);
                }
                case CancelOrder -> {
                    reason = (String) element(p, CommandDecoder::string, 0, "struct variant Command::CancelOrder with 1 element");
                    command = new CancelOrder(reason);
                }
                default -> command = new ConfirmDelivery();
            }
            if (p.nextToken() != JsonToken.END_ARRAY) throw fail(p, "trailing elements in " + tag);
            return command;
        } else {
            throw fail(p, "invalid type: " + token + ", expected internally tagged enum Command");
        }
    }

    /** The next element of an array being read as a struct: invalid length if the array ends. */
    private static Object element(JsonParser p, FieldReader reader, int index, String expected) throws IOException {
        if (p.nextToken() == JsonToken.END_ARRAY) throw fail(p, "invalid length " + index + ", expected " + expected);
        return reader.read(p);
    }

    private static final String[] ENVELOPE_FIELDS = {"schema_version", "command_id", "issued_at_ms", "order_id", "command"};
    private static final FieldReader[] ENVELOPE_READERS = {
        p -> unsigned(p, 32), CommandDecoder::string, p -> unsigned(p, 64), CommandDecoder::string, CommandDecoder::command
    };

    /** {@code CommandEnvelope}'s derived deserializer, registered with Jackson by {@link Json}. */
    static final class EnvelopeDeserializer extends StdDeserializer<CommandEnvelope> {
        private static final long serialVersionUID = 1L;

        EnvelopeDeserializer() {
            super(CommandEnvelope.class);
        }

        @Override
        public CommandEnvelope deserialize(JsonParser p, DeserializationContext ctxt) throws IOException {
            Object[] v = struct(p, "struct CommandEnvelope", ENVELOPE_FIELDS, ENVELOPE_READERS);
            return new CommandEnvelope((Long) v[0], (String) v[1], (Long) v[2], (String) v[3], (Command) v[4]);
        }
    }

    /**
     * The probe of {@code decode_command}: {@code struct VersionProbe { schema_version: u64 }}
     * (unknown fields ignored), read when the envelope is not. Null when it does not read.
     */
    private static BigInteger probeSchemaVersion(byte[] value) {
        if (notJsonText(value) != null) return null;
        try (JsonParser p = Json.FACTORY.createParser(value)) {
            JsonToken token = p.nextToken();
            long version;
            if (token == JsonToken.START_OBJECT) {
                Long found = null;
                for (String name = p.nextFieldName(); name != null; name = p.nextFieldName()) {
                    p.nextToken();
                    if (name.equals("schema_version")) {
                        if (found != null) return null;
                        found = unsigned(p, 64);
                    } else {
                        p.skipChildren();
                    }
                }
                if (found == null) return null;
                version = found;
            } else if (token == JsonToken.START_ARRAY) {
                if (p.nextToken() == JsonToken.END_ARRAY) return null;
                version = unsigned(p, 64);
                if (p.nextToken() != JsonToken.END_ARRAY) return null;
            } else {
                return null;
            }
            if (p.nextToken() != null) return null;
            return new BigInteger(Long.toUnsignedString(version));
        } catch (IOException e) {
            return null;
        }
    }
}
