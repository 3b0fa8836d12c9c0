package rail.peer;

/**
 * Rust's {@code format!("{:?}", s)} of a {@code String}, which {@code check_order} puts in its
 * "unknown SKU" reason: the text in double quotes, with {@code char::escape_debug_ext}'s escapes
 * ({@code \0 \t \r \n \\ \"}; a backslash, {@code u{hex}} for a character that is not printable or that
 * extends a grapheme; everything else, single quotes included, as is).
 *
 * <p>Printability follows the categories Rust's {@code core::unicode::printable} is generated
 * from (not printable: Zs but the space, Zl, Zp, Cc, Cf, Cs, Co, Cn), grapheme extension the
 * Unicode property Grapheme_Extend (Mn, Me and Other_Grapheme_Extend). Java 17 knows Unicode 13;
 * a character assigned since then is unassigned here, and escaped where Rust may print it as is.
 */
final class RustDebug {
    private RustDebug() {}

    /** Unicode's Other_Grapheme_Extend code points (the Grapheme_Extend ones that are not Mn or Me). */
    private static final int[][] OTHER_GRAPHEME_EXTEND = {
        {0x09BE, 0x09BE}, {0x09D7, 0x09D7}, {0x0B3E, 0x0B3E}, {0x0B57, 0x0B57}, {0x0BBE, 0x0BBE}, {0x0BD7, 0x0BD7},
        {0x0CC2, 0x0CC2}, {0x0CD5, 0x0CD6}, {0x0D3E, 0x0D3E}, {0x0D57, 0x0D57}, {0x0DCF, 0x0DCF}, {0x0DDF, 0x0DDF},
        {0x1B35, 0x1B35}, {0x200C, 0x200C}, {0x302E, 0x302F}, {0xFF9E, 0xFF9F}, {0x1133E, 0x1133E}, {0x11357, 0x11357},
        {0x114B0, 0x114B0}, {0x114BD, 0x114BD}, {0x115AF, 0x115AF}, {0x11930, 0x11930}, {0x1D165, 0x1D165},
        {0x1D16E, 0x1D172}, {0xE0020, 0xE007F},
    };

    /** {@code <str as Debug>::fmt}. */
    static String string(String s) {
        StringBuilder out = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); ) {
            int c = s.codePointAt(i);
            i += Character.charCount(c);
            switch (c) {
                case 0 -> out.append("\\0");
                case '\t' -> out.append("\\t");
                case '\r' -> out.append("\\r");
                case '\n' -> out.append("\\n");
                case '\\' -> out.append("\\\\");
                case '"' -> out.append("\\\"");
                default -> {
                    if (c >= 0x20 && c < 0x7F) {
                        out.append((char) c);
                    } else if (isGraphemeExtended(c) || !isPrintable(c)) {
                        out.append("\\u{").append(Integer.toHexString(c)).append('}');
                    } else {
                        out.appendCodePoint(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }

    /** {@code core::unicode::printable::is_printable}. */
    private static boolean isPrintable(int c) {
        if (c < 0x20) return false;
        if (c < 0x7F) return true;
        return switch (Character.getType(c)) {
            case Character.SPACE_SEPARATOR, Character.LINE_SEPARATOR, Character.PARAGRAPH_SEPARATOR, Character.CONTROL,
                    Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED -> false;
            default -> true;
        };
    }

    /** {@code char::is_grapheme_extended}. */
    private static boolean isGraphemeExtended(int c) {
        if (c < 0x300) return false;
        int type = Character.getType(c);
        if (type == Character.NON_SPACING_MARK || type == Character.ENCLOSING_MARK) return true;
        for (int[] range : OTHER_GRAPHEME_EXTEND) {
            if (c >= range[0] && c <= range[1]) return true;
        }
        return false;
    }
}
