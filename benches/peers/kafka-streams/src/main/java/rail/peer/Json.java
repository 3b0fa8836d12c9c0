package rail.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.json.JsonWriteFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import com.fasterxml.jackson.databind.ObjectWriter;
import com.fasterxml.jackson.databind.module.SimpleModule;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import rail.peer.Model.CommandEnvelope;
import rail.peer.Model.OrderUpdate;

/**
 * The JSON of the topics, with Jackson, byte for byte as serde_json reads and writes it: commands
 * are read straight into {@link CommandEnvelope} by {@link CommandDecoder}'s deserializers, updates
 * written from {@link OrderUpdate} in Rust's field order.
 */
final class Json {
    private Json() {}

    static final JsonFactory FACTORY = JsonFactory.builder()
            // serde_json escapes control characters as backslash-u-001f: hex digits in lower case.
            .disable(JsonWriteFeature.WRITE_HEX_UPPER_CASE)
            // serde_json writes a character beyond U+FFFF as its 4 UTF-8 bytes, not as two
            // 3-byte surrogates.
            .enable(JsonWriteFeature.COMBINE_UNICODE_SURROGATES_IN_UTF8)
            // serde_json has no limit on a string's length; Jackson's default is 20M characters.
            .streamReadConstraints(StreamReadConstraints.builder().maxStringLength(Integer.MAX_VALUE).build())
            .build();

    static final ObjectMapper MAPPER = new ObjectMapper(FACTORY)
            .registerModule(new SimpleModule("rail-commands").addDeserializer(CommandEnvelope.class, new CommandDecoder.EnvelopeDeserializer()));

    /** Reads one command; anything after it but white space is an error, as in serde_json::from_slice. */
    static final ObjectReader COMMAND_READER =
            MAPPER.readerFor(CommandEnvelope.class).with(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    private static final ObjectWriter UPDATE_WRITER = MAPPER.writerFor(OrderUpdate.class);

    /** An update as produced to {@code order-updates}: Rust's {@code serde_json::to_vec(&update)}. */
    static byte[] update(OrderUpdate update) {
        try {
            return UPDATE_WRITER.writeValueAsBytes(update);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The replay's line for a dead letter: {@code {"dead_letter":true,"key":"..."}} (key null when absent). */
    static byte[] deadLetterLine(String key) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(32 + (key == null ? 0 : key.length()));
        try (JsonGenerator g = FACTORY.createGenerator(out)) {
            g.writeStartObject();
            g.writeBooleanField("dead_letter", true);
            g.writeStringField("key", key);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }
}
