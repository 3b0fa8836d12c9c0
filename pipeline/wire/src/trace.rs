//! W3C Trace Context (`traceparent`) across the services: a command carries one from the API
//! request (or a new one) onto its Kafka record and its HTTP fallback call; dev-materiels gives
//! each update a child of the command's (same trace, new span), and the logs name the trace.
//!
//! Format (<https://www.w3.org/TR/trace-context/#traceparent-header>):
//! `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.

use std::fmt;

/// The header name, on Kafka records and HTTP requests alike.
pub const TRACEPARENT: &str = "traceparent";

/// One span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace.
    pub fn root() -> TraceParent {
        TraceParent { trace_id: nonzero(rand::random()), span_id: nonzero(rand::random()), sampled: true }
    }

    /// A new span in the same trace, whose parent is this one.
    pub fn child(&self) -> TraceParent {
        TraceParent { span_id: nonzero(rand::random()), ..*self }
    }

    /// Parses a `traceparent` value; `None` for anything the specification says to ignore
    /// (a wrong length, non-hex digits, an all-zero id, version `ff`).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add some.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// From raw header bytes, if they hold a valid value.
    pub fn from_bytes(value: &[u8]) -> Option<TraceParent> {
        std::str::from_utf8(value).ok().and_then(TraceParent::parse)
    }

    /// The trace id, as logs show it.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn nonzero<T: Default + PartialEq + From<u8>>(value: T) -> T {
    if value == T::default() {
        T::from(1)
    } else {
        value
    }
}

impl fmt::Display for TraceParent {
    /// Written digit by digit rather than through `{:032x}`: every update carries one, and
    /// the formatting machinery was 2% of dev-materiels' stream thread (docs/benchmarks.md,
    /// 2026-12-07).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut value[3..35], self.trace_id);
        hex_into(&mut value[36..52], u128::from(self.span_id));
        value[54] = if self.sampled { b'1' } else { b'0' };
        f.write_str(std::str::from_utf8(&value).map_err(|_| fmt::Error)?)
    }
}

/// Writes the low digits of `value` in lower-case hexadecimal, filling `out`.
fn hex_into(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// A trace id for the logs, formatted only if a log line is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceId(pub Option<u128>);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id:032x}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_example_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(value).expect("valid");
        assert_eq!(parsed.to_string(), value);
        let unsampled = TraceParent { sampled: false, ..parsed };
        assert_eq!(unsampled.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let small = TraceParent { trace_id: 1, span_id: 0xa, sampled: true };
        assert_eq!(small.to_string(), format!("00-{:032x}-{:016x}-01", 1u128, 0xau64));
        assert_eq!(TraceId(Some(parsed.trace_id)).to_string(), parsed.trace_id());
        assert_eq!(TraceId(None).to_string(), "");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
    }

    #[test]
    fn invalid_values_are_ignored() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn new_traces_are_valid() {
        let root = TraceParent::root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
