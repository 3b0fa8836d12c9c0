//! The wagon-lits view: versions only move forward, offsets travel with the rows.

use state::{OrderStatus, OrderUpdate, Outcome, StoreOptions, Trigger, ViewRecord, ViewRow, ViewStore};

fn update(order: &str, version: u64, status: OrderStatus, previous: Option<OrderStatus>) -> OrderUpdate {
    OrderUpdate {
        schema_version: 1,
        order_id: order.into(),
        version,
        status: Some(status),
        previous_status: previous,
        outcome: Outcome::Applied,
        reason: None,
        trigger: Trigger::Command,
        command_id: Some(format!("{order}-{version}")),
        timestamp_ms: version,
        expected_ship_ms: None,
    }
}

fn rec(partition: i32, offset: i64, u: OrderUpdate) -> ViewRecord {
    ViewRecord { position: Some((partition, offset)), update: Some(u) }
}

#[test]
fn applies_in_version_order_and_keeps_offsets_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let stats = view
        .apply(&[
            rec(0, 0, update("a", 1, OrderStatus::Accepted, None)),
            rec(1, 5, update("b", 1, OrderStatus::Accepted, None)),
            rec(0, 1, update("a", 2, OrderStatus::InPreparation, Some(OrderStatus::Accepted))),
            ViewRecord { position: Some((1, 6)), update: None },
        ])
        .expect("apply");
    assert_eq!((stats.applied, stats.stale, stats.undecodable), (3, 0, 1));
    assert_eq!(view.get("a").expect("get").map(|r| r.version), Some(2));
    let offsets = view.offsets().expect("offsets");
    assert_eq!((offsets.get(&0), offsets.get(&1)), (Some(&2), Some(&7)));
    let counts = view.counts();
    assert_eq!((counts[&OrderStatus::Accepted], counts[&OrderStatus::InPreparation]), (1, 1));
    let listed: Vec<_> =
        view.list_by_status(OrderStatus::Accepted, None, 10).expect("list").into_iter().map(|r| r.order_id).collect();
    assert_eq!(listed, vec!["b".to_string()]);
}

#[test]
fn never_goes_backwards_nor_applies_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
    view.apply(&[rec(0, 0, update("a", 3, OrderStatus::Shipped, Some(OrderStatus::InPreparation)))]).expect("apply");
    let stats = view
        .apply(&[
            rec(0, 1, update("a", 2, OrderStatus::InPreparation, Some(OrderStatus::Accepted))),
            rec(0, 2, update("a", 3, OrderStatus::Shipped, Some(OrderStatus::InPreparation))),
        ])
        .expect("apply");
    assert_eq!((stats.applied, stats.stale), (0, 2));
    assert_eq!(view.get("a").expect("get").and_then(|r| r.status), Some(OrderStatus::Shipped));
    assert_eq!(view.counts()[&OrderStatus::Shipped], 1);
    assert_eq!(view.counts()[&OrderStatus::InPreparation], 0);
}

#[test]
fn paging_by_status_and_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
        let records: Vec<_> =
            (0..25).map(|i| rec(0, i, update(&format!("o{i:02}"), 1, OrderStatus::Accepted, None))).collect();
        view.apply(&records).expect("apply");
        view.apply(&[rec(0, 25, update("o03", 2, OrderStatus::Cancelled, Some(OrderStatus::Accepted)))])
            .expect("apply");
    }
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    assert_eq!(view.counts()[&OrderStatus::Accepted], 24);
    assert_eq!(view.counts()[&OrderStatus::Cancelled], 1);
    let page1 = view.list_by_status(OrderStatus::Accepted, None, 10).expect("page 1");
    let page2 =
        view.list_by_status(OrderStatus::Accepted, page1.last().map(|r| r.order_id.as_str()), 10).expect("page 2");
    let page3 =
        view.list_by_status(OrderStatus::Accepted, page2.last().map(|r| r.order_id.as_str()), 10).expect("page 3");
    assert_eq!((page1.len(), page2.len(), page3.len()), (10, 10, 4));
    assert!(page1.iter().chain(&page2).chain(&page3).all(|r| r.order_id != "o03"));
    assert_eq!(view.offsets().expect("offsets").get(&0), Some(&26));
}

fn with_command(mut u: OrderUpdate, command_id: &str) -> OrderUpdate {
    u.command_id = Some(command_id.into());
    u
}

fn command(order_id: &str, command_id: &str) -> state::CommandEnvelope {
    state::CommandEnvelope::new(command_id, order_id, 0, state::Command::ConfirmDelivery {})
}

#[test]
fn a_decision_over_http_is_provisional_and_holds_its_order_until_the_topic_shows_its_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let answered = with_command(update("a", 1, OrderStatus::Accepted, None), "place-a");
    view.record_direct(&command("a", "place-a"), std::slice::from_ref(&answered), 1_000).expect("record over HTTP");
    assert_eq!(view.pending("a").map(|p| (p.command_id, p.since_ms)), Some(("place-a".into(), 1_000)));
    assert_eq!(view.pending_count(), 1);
    // The answer is shown, provisional; the rows (lists, counts) hold only what the topic said.
    assert_eq!(view.read("a").expect("read"), Some(ViewRow { update: answered.clone(), provisional: true }));
    assert_eq!(view.get("a").expect("get"), None);
    assert_eq!(view.counts().get(&OrderStatus::Accepted).copied().unwrap_or(0), 0);
    // Another command's update at the same version (decided by another owner first) does not
    // confirm it, but the row takes it and the provisional answer no longer shows.
    let mut refused = with_command(update("a", 1, OrderStatus::Accepted, None), "cancel-a");
    refused.status = None;
    refused.outcome = Outcome::Refused;
    view.apply(&[rec(0, 0, refused.clone())]).expect("apply");
    assert!(view.pending("a").is_some());
    assert_eq!(view.read("a").expect("read"), Some(ViewRow { update: refused, provisional: false }));
    // The command's own update, whatever its version, does; and the mark survives a reopen
    // until then.
    view.record_direct(
        &command("b", "place-b"),
        &[with_command(update("b", 1, OrderStatus::Accepted, None), "place-b")],
        2_000,
    )
    .expect("record over HTTP");
    drop(view);
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    assert_eq!(view.pending("b").map(|p| p.command_id), Some("place-b".into()));
    assert_eq!(view.pending("b").and_then(|p| p.command).map(|c| c.command_id), Some("place-b".into()));
    let decided = with_command(update("a", 2, OrderStatus::Accepted, None), "place-a");
    view.apply(&[rec(0, 1, decided.clone())]).expect("apply");
    assert!(view.pending("a").is_none());
    assert_eq!(view.read("a").expect("read"), Some(ViewRow { update: decided, provisional: false }));
    view.apply(&[rec(0, 2, with_command(update("b", 1, OrderStatus::Accepted, None), "place-b"))]).expect("apply");
    drop(view);
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    assert_eq!(view.pending_count(), 0);
}

#[test]
fn an_answer_that_changed_nothing_leaves_nothing_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
    view.record_direct(&command("a", "again"), &[], 1_000).expect("record over HTTP");
    assert_eq!(view.pending_count(), 0);
}

#[test]
fn the_journal_keeps_each_command_sent_until_the_standby_has_its_answer_across_reopens_and_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
        view.journal(&command("a", "a-1"), 10).expect("journal a-1");
        view.journal(&command("b", "b-1"), 11).expect("journal b-1");
        view.journal(&command("a", "a-2"), 12).expect("journal a-2");
        view.journal(&command("a", "a-1"), 13).expect("a command journaled again is kept once");
        assert_eq!(view.journal_len(), 3);
        // An update of a-1 answers it (at partition 0, offset 4) but keeps it: the standby may
        // not have the answer. A timer's update (no command id) answers nothing.
        let mut timer = update("b", 1, OrderStatus::Accepted, None);
        timer.command_id = None;
        view.apply(&[rec(0, 4, update("a", 1, OrderStatus::Accepted, None)), rec(1, 0, timer)]).expect("apply");
        assert_eq!((view.journal_len(), view.journal_answered_len()), (3, 1));
        // Its acknowledgement lost, it is not forgotten: the answer proves Kafka had it.
        view.forget("a-1").expect("forget a-1");
        assert_eq!(view.journal_len(), 3);
        // The copy holds partition 0 below offset 4, and partition 1: the answer has not crossed.
        let copied = |p0: i64| [(0, p0), (1, 100)].into_iter().collect::<std::collections::BTreeMap<i32, i64>>();
        assert_eq!(view.forget_copied(&copied(4)).expect("forget"), 0);
        view.journal(&command("c", "c-1"), 14).expect("journal c-1");
        view.forget("c-1").expect("c-1 was not sent after all");
    }
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    let entries = view.journal_entries().expect("entries");
    let ids: Vec<&str> = entries.iter().map(|(_, e)| e.command.command_id.as_str()).collect();
    assert_eq!(ids, vec!["a-1", "b-1", "a-2"], "in the order first sent");
    assert_eq!(entries[1].1.sent_ms, 11);
    let answer = entries[0].1.answered.expect("a-1's answer survives a reopen");
    assert_eq!((answer.partition, answer.offset), (0, 4));
    assert_eq!(view.journal_answered_len(), 1);

    // Carried into a new view (a rebuild after a failover), in the same order and unanswered: the
    // answer's position was the other cluster's. The new cluster answers a-2 only.
    let other = tempfile::tempdir().expect("tempdir");
    let rebuilt = ViewStore::open(other.path(), &StoreOptions::default()).expect("open");
    rebuilt.carry_journal(&entries).expect("carry");
    assert_eq!(rebuilt.journal_answered_len(), 0);
    rebuilt.apply(&[rec(0, 0, update("a", 2, OrderStatus::Cancelled, Some(OrderStatus::Accepted)))]).expect("apply");
    let unanswered: Vec<String> = rebuilt
        .journal_entries()
        .expect("entries")
        .into_iter()
        .filter(|(_, e)| e.answered.is_none())
        .map(|(_, e)| e.command.command_id)
        .collect();
    assert_eq!(unanswered, vec!["a-1".to_string(), "b-1".to_string()], "what a take-over sends again");
    rebuilt.journal(&command("d", "d-1"), 20).expect("journal after a carry");
    let sequences: Vec<u64> = rebuilt.journal_entries().expect("entries").into_iter().map(|(s, _)| s).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "a new entry goes after the carried ones: {sequences:?}");

    // Once the copy holds offset 4 of partition 0, a-1 leaves the first view's journal.
    let copied: std::collections::BTreeMap<i32, i64> = [(0, 5)].into_iter().collect();
    assert_eq!(view.forget_copied(&copied).expect("forget"), 1);
    assert_eq!((view.journal_len(), view.journal_answered_len()), (2, 0));
    drop(view);
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    let ids: Vec<String> =
        view.journal_entries().expect("entries").into_iter().map(|(_, e)| e.command.command_id).collect();
    assert_eq!(ids, vec!["b-1".to_string(), "a-2".to_string()]);
}

#[test]
fn with_no_watch_of_the_copy_an_answered_command_leaves_the_journal_after_a_while() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
    view.journal(&command("a", "a-1"), 10).expect("journal a-1");
    view.journal(&command("b", "b-1"), 11).expect("journal b-1");
    view.apply(&[rec(0, 0, update("a", 1, OrderStatus::Accepted, None))]).expect("apply");
    let answered_at = view.journal_entries().expect("entries")[0].1.answered.expect("answered").at_ms;
    assert_eq!(view.forget_answered_before(answered_at).expect("forget"), 0, "not before it was answered");
    assert_eq!(view.forget_answered_before(answered_at + 1).expect("forget"), 1);
    let ids: Vec<String> =
        view.journal_entries().expect("entries").into_iter().map(|(_, e)| e.command.command_id).collect();
    assert_eq!(ids, vec!["b-1".to_string()], "an unanswered command stays whatever its age");
}

#[test]
fn a_command_decided_over_http_joins_the_journal_answered_when_order_updates_confirms_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("open");
    let decided = update("a", 1, OrderStatus::Accepted, None);
    // Not journaling: the confirmation only takes the pending mark away.
    view.record_direct(&command("a", "a-1"), std::slice::from_ref(&decided), 1_000).expect("record over HTTP");
    view.apply(&[rec(0, 3, decided.clone())]).expect("apply");
    assert_eq!((view.pending_count(), view.journal_len()), (0, 0));

    view.set_journaling(true);
    let next = update("a", 2, OrderStatus::Cancelled, Some(OrderStatus::Accepted));
    view.record_direct(&command("a", "a-2"), std::slice::from_ref(&next), 2_000).expect("record over HTTP");
    view.apply(&[rec(0, 7, next)]).expect("apply");
    assert_eq!((view.pending_count(), view.journal_len(), view.journal_answered_len()), (0, 1, 1));
    drop(view);
    let view = ViewStore::open(dir.path(), &StoreOptions::default()).expect("reopen");
    let entries = view.journal_entries().expect("entries");
    assert_eq!(entries.len(), 1);
    let (_, entry) = &entries[0];
    assert_eq!((entry.command.command_id.as_str(), entry.sent_ms), ("a-2", 2_000));
    let answer = entry.answered.expect("answered where order-updates confirmed it");
    assert_eq!((answer.partition, answer.offset), (0, 7));
}
