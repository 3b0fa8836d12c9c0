//! Reproducible order traffic: what the demo, the tests and the benches send.
//!
//! A workload is made in two phases, as wagon-lits would act: first it places orders (with a mix
//! of invalid ones, early cancellations, retried commands and mistakes), then, once dev-materiels
//! has shipped them, it confirms deliveries (with a few late cancellations, which are refused).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state::catalogue::DEFAULT_SKUS;
use state::{Command, CommandEnvelope, OrderLine, PlaceOrder};

/// Shares of each kind of traffic, per order placed.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Orders that break a business rule (rejected by dev-materiels).
    pub invalid: f64,
    /// Orders cancelled right after they are placed.
    pub cancel: f64,
    /// Commands sent twice with the same command id (a retry).
    pub duplicate: f64,
    /// Deliveries confirmed before shipping (refused).
    pub early_confirm: f64,
    /// Commands for orders that were never placed (refused).
    pub unknown: f64,
}

impl Mix {
    /// Only valid orders, nothing else.
    pub const CLEAN: Mix = Mix { invalid: 0.0, cancel: 0.0, duplicate: 0.0, early_confirm: 0.0, unknown: 0.0 };
    /// Mostly new valid orders, with some of everything else.
    pub const REALISTIC: Mix = Mix { invalid: 0.05, cancel: 0.05, duplicate: 0.02, early_confirm: 0.02, unknown: 0.01 };
}

/// Makes commands with ids unique to one run.
pub struct Workload {
    rng: StdRng,
    prefix: String,
    now_ms: u64,
    counter: u64,
}

impl Workload {
    /// `prefix` starts every order id (use a fresh one per run against a long-lived cluster).
    pub fn new(seed: u64, prefix: impl Into<String>, now_ms: u64) -> Workload {
        Workload { rng: StdRng::seed_from_u64(seed), prefix: prefix.into(), now_ms, counter: 0 }
    }

    pub fn order_id(&self, i: usize) -> String {
        format!("{}-{i:07}", self.prefix)
    }

    fn envelope(&mut self, order_id: &str, command: Command) -> CommandEnvelope {
        self.counter += 1;
        CommandEnvelope::new(format!("{order_id}/c{}", self.counter), order_id, self.now_ms, command)
    }

    fn valid_order(&mut self) -> PlaceOrder {
        let lines = (0..self.rng.random_range(1..=4))
            .map(|_| OrderLine {
                sku: DEFAULT_SKUS[self.rng.random_range(0..DEFAULT_SKUS.len())].to_string(),
                quantity: self.rng.random_range(1..=40),
            })
            .collect();
        PlaceOrder {
            wagon_id: format!("WL-{}", self.rng.random_range(1000..1100)),
            requested_by: format!("agent-{}", self.rng.random_range(1..30)),
            lines,
        }
    }

    fn invalid_order(&mut self) -> PlaceOrder {
        let mut order = self.valid_order();
        match self.rng.random_range(0..4) {
            0 => order.lines.clear(),
            1 => order.lines[0].quantity = 0,
            2 => order.lines[0].sku = "FLUX-CAPACITOR".into(),
            _ => {
                let line = order.lines[0].clone();
                order.lines = vec![line; 51];
            }
        }
        order
    }

    /// Phase one: `orders` orders placed (ids `order_id(0..orders)`), with the extra commands the
    /// mix asks for, in the order wagon-lits sends them.
    pub fn place_phase(&mut self, orders: usize, mix: Mix) -> Vec<CommandEnvelope> {
        let mut out = Vec::with_capacity(orders + orders / 5);
        for i in 0..orders {
            let id = self.order_id(i);
            let place = if self.rng.random_bool(mix.invalid) { self.invalid_order() } else { self.valid_order() };
            let placed = self.envelope(&id, Command::PlaceOrder(place));
            out.push(placed.clone());
            if self.rng.random_bool(mix.duplicate) {
                out.push(placed);
            }
            if self.rng.random_bool(mix.early_confirm) {
                out.push(self.envelope(&id, Command::ConfirmDelivery {}));
            }
            if self.rng.random_bool(mix.cancel) {
                let cancel = self.envelope(&id, Command::CancelOrder { reason: "wagon withdrawn from service".into() });
                out.push(cancel.clone());
                if self.rng.random_bool(mix.duplicate * 5.0) {
                    out.push(cancel);
                }
            }
            if self.rng.random_bool(mix.unknown) {
                let ghost = format!("{}-ghost-{i:07}", self.prefix);
                out.push(self.envelope(&ghost, Command::CancelOrder { reason: "no such order".into() }));
            }
        }
        out
    }

    /// Phase two, for orders that shipped: confirms delivery of a `confirm` share of them and
    /// tries to cancel a `late_cancel` share (refused: too late).
    pub fn delivery_phase(
        &mut self,
        shipped: &[String],
        confirm: f64,
        late_cancel: f64,
        duplicate: f64,
    ) -> Vec<CommandEnvelope> {
        let mut out = Vec::with_capacity(shipped.len());
        for id in shipped {
            if self.rng.random_bool(confirm) {
                let confirmation = self.envelope(id, Command::ConfirmDelivery {});
                out.push(confirmation.clone());
                if self.rng.random_bool(duplicate) {
                    out.push(confirmation);
                }
            } else if self.rng.random_bool(late_cancel) {
                out.push(self.envelope(id, Command::CancelOrder { reason: "changed plans".into() }));
            }
        }
        out
    }
}
