use super::*;
use crate::order::{OrderStatus, Timer, TimerKind};

fn state(id: &str, version: u64, timer: Option<Timer>) -> OrderState {
    OrderState { version, status: Some(OrderStatus::Accepted), timer, ..OrderState::new(id) }
}

#[test]
fn a_store_open_elsewhere_in_the_process_is_locked_until_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let second = OrderStore::open(dir.path(), &StoreOptions::default());
    assert!(matches!(second, Err(StoreError::Locked { .. })), "{:?}", second.err());
    drop(first);
    OrderStore::open(dir.path(), &StoreOptions::default()).expect("open once closed");
}

#[test]
fn batch_writes_state_timers_and_position_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
    assert_eq!(store.changelog_position().expect("position"), None);

    let t1 = Timer { kind: TimerKind::Prepare, due_ms: 10 };
    let s = state("a", 1, Some(t1));
    let mut batch = StoreBatch::new();
    store.put(&mut batch, &s, &encode_state(&s).expect("encode")).expect("put");
    batch.set_position(7);
    store.write(batch).expect("write");
    assert_eq!(store.get("a").expect("get"), Some(s.clone()));
    assert_eq!(store.timers().expect("timers"), vec![(10, "a".to_string())]);
    assert_eq!(store.changelog_position().expect("position"), Some(7));

    // Moving the timer moves it in what the states say.
    let t2 = Timer { kind: TimerKind::Ship, due_ms: 20 };
    let s2 = state("a", 2, Some(t2));
    let mut batch = StoreBatch::new();
    store.put(&mut batch, &s2, &encode_state(&s2).expect("encode")).expect("put");
    store.write(batch).expect("write");
    assert_eq!(store.timers().expect("timers"), vec![(20, "a".to_string())]);
    assert_eq!(store.changelog_position().expect("position"), Some(7));
}

#[test]
fn restore_applies_records_in_order_and_tombstones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let a1 = state("a", 1, Some(Timer { kind: TimerKind::Prepare, due_ms: 5 }));
    let a2 = state("a", 2, Some(Timer { kind: TimerKind::Ship, due_ms: 9 }));
    let b1 = state("b", 1, Some(Timer { kind: TimerKind::Prepare, due_ms: 6 }));
    let records = vec![
        (b"a".to_vec(), Some(encode_state(&a1).expect("encode"))),
        (b"b".to_vec(), Some(encode_state(&b1).expect("encode"))),
        (b"a".to_vec(), Some(encode_state(&a2).expect("encode"))),
        (b"b".to_vec(), None),
    ];
    assert_eq!(store.restore(&records, 42).expect("restore"), 4);
    assert_eq!(store.get("a").expect("get"), Some(a2));
    assert_eq!(store.get("b").expect("get"), None);
    assert_eq!(store.timers().expect("timers"), vec![(9, "a".to_string())]);
    assert_eq!(store.changelog_position().expect("position"), Some(42));
}

#[test]
fn restore_never_goes_back_and_drops_published_outbox_entries() {
    use crate::order::{OrderUpdate, Outcome, Trigger};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
    // Over HTTP, the order reached v3 and v4 while Kafka was away.
    let update = |v| OrderUpdate {
        schema_version: 1,
        order_id: "a".into(),
        version: v,
        status: Some(OrderStatus::Accepted),
        previous_status: None,
        outcome: Outcome::Refused,
        reason: None,
        trigger: Trigger::Command,
        command_id: Some(format!("c{v}")),
        timestamp_ms: v,
        expected_ship_ms: None,
    };
    let mut batch = StoreBatch::new();
    for v in [3, 4] {
        let s = state("a", v, None);
        store.put(&mut batch, &s, &encode_state(&s).expect("encode")).expect("put");
        let entry = OutboxEntry { update: update(v), state: s, command: None, superseded: false };
        store.put_outbox(&mut batch, v, &entry).expect("outbox");
    }
    store.write(batch).expect("write");
    // The changelog holds v2 (older) and v3 (published from the outbox: it has seen c3).
    let published = OrderState { applied_commands: vec!["c3".into()], ..state("a", 3, None) };
    let records = vec![
        (b"a".to_vec(), Some(encode_state(&state("a", 2, None)).expect("encode"))),
        (b"a".to_vec(), Some(encode_state(&published).expect("encode"))),
    ];
    store.restore(&records, 10).expect("restore");
    assert_eq!(store.get("a").expect("get").map(|s| s.version), Some(4), "the store never goes back");
    let left: Vec<u64> = store.outbox().expect("outbox").into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(left, vec![4], "v3 was published, v4 was not");

    // Another instance owned the partition meanwhile, from v3: its v4 never saw c4. Its
    // history wins, and the order's entry is superseded (to be decided again).
    let other = OrderState { applied_commands: vec!["c3".into(), "d4".into()], ..state("a", 4, None) };
    store.restore(&[(b"a".to_vec(), Some(encode_state(&other).expect("encode")))], 11).expect("restore");
    assert_eq!(store.get("a").expect("get"), Some(other.clone()), "the changelog's history replaces the store's");
    let left: Vec<(u64, bool)> =
        store.outbox().expect("outbox").into_iter().map(|(seq, e)| (seq, e.superseded)).collect();
    assert_eq!(left, vec![(4, true)]);
    // Older records of that history do not undo it.
    store.restore(&[(b"a".to_vec(), Some(encode_state(&published).expect("encode")))], 12).expect("restore");
    assert_eq!(store.get("a").expect("get"), Some(other));
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = state("x", 3, None);
    {
        let store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
        let mut batch = StoreBatch::new();
        store.put(&mut batch, &s, &encode_state(&s).expect("encode")).expect("put");
        batch.set_position(100);
        store.write(batch).expect("write");
    }
    let store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    assert_eq!(store.get("x").expect("get"), Some(s));
    assert_eq!(store.changelog_position().expect("position"), Some(100));
}

#[test]
fn flushed_blocks_go_to_the_block_cache() {
    // RocksDB writes the options in force to an OPTIONS file at each change: the table options
    // set by name after the open must be there, for every column family.
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let latest = std::fs::read_dir(dir.path())
        .expect("read the store's directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
        .max_by_key(|e| e.file_name())
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(latest.path()).expect("read the OPTIONS file");
    let set = text.matches("prepopulate_block_cache=kFlushOnly").count();
    assert_eq!(set, 4, "set for orders, timers, meta and outbox (not RocksDB's own default family)");
}

#[test]
fn the_timer_index_earlier_builds_wrote_is_ignored() {
    // A store written before 2026-12-07 has a `timers` family of (due ++ order id) keys; the
    // timers are now read from the states, so an entry left there (here one whose state has
    // none) fires nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OrderStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let s = state("a", 3, None);
    let mut batch = StoreBatch::new();
    store.put(&mut batch, &s, &encode_state(&s).expect("encode")).expect("put");
    let mut stale = 10u64.to_be_bytes().to_vec();
    stale.extend_from_slice(b"a");
    batch.batch.put_cf(store.cf(CF_TIMERS).expect("timers family"), stale, []);
    store.write(batch).expect("write");
    let b = state("b", 1, Some(Timer { kind: TimerKind::Prepare, due_ms: 30 }));
    let c = state("c", 1, Some(Timer { kind: TimerKind::Prepare, due_ms: 20 }));
    let mut batch = StoreBatch::new();
    store.put(&mut batch, &b, &encode_state(&b).expect("encode")).expect("put");
    store.put(&mut batch, &c, &encode_state(&c).expect("encode")).expect("put");
    store.write(batch).expect("write");
    assert_eq!(store.timers().expect("timers"), vec![(20, "c".to_string()), (30, "b".to_string())]);
}
