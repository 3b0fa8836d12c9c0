//! Writing dev-materiels' changelog by hand, as the tests that stage a previous owner's state do
//! (`zombie.rs`, `open_transaction.rs`).

use rdkafka::producer::{BaseProducer, BaseRecord};
use state::order::{OrderLine, PlaceOrder, Timer, TimerKind};
use state::{OrderState, OrderStatus};

use super::TestEnv;

/// Creates the changelog topic (it exists once a dev-materiels has started; a test that seeds it
/// creates it first).
pub fn create(env: &TestEnv) {
    engine::admin::ensure_topics(
        &env.kafka,
        &[wire::topics::changelog_topic(&env.topics, &env.changelog(), env.topics.partitions)],
    )
    .expect("changelog topic");
}

/// An order accepted, waiting on its preparation timer due at `due_ms`.
pub fn accepted(id: &str, due_ms: u64) -> OrderState {
    OrderState {
        version: 1,
        status: Some(OrderStatus::Accepted),
        placed: Some(PlaceOrder {
            wagon_id: "WL-9".into(),
            requested_by: "agent".into(),
            lines: vec![OrderLine { sku: "BRAKE-PAD-UIC".into(), quantity: 1 }],
        }),
        timer: Some(Timer { kind: TimerKind::Prepare, due_ms }),
        ..OrderState::new(id)
    }
}

/// Queues `state` as its changelog record on `partition`.
pub fn send(producer: &BaseProducer, changelog: &str, partition: i32, state: &OrderState) {
    let value = state::store::encode_state(state).expect("encode");
    producer
        .send(BaseRecord::to(changelog).partition(partition).key(state.order_id.as_str()).payload(&value))
        .map_err(|(e, _)| e)
        .expect("queue a changelog record");
}
