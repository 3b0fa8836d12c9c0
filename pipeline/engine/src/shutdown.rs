//! Graceful shutdown on SIGTERM and SIGINT.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A flag that turns true on SIGTERM or SIGINT. A second signal of the same kind while the
/// service is still stopping kills it at once.
pub fn on_signal() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Order matters: the first registration exits only if the flag is already set.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    Ok(flag)
}
