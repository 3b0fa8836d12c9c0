//! `wagon-lits cluster take-over`: after the primary cluster is lost (and after
//! `dev-materiels cluster take-over`), moves wagon-lits' view to the standby cluster and sends
//! again what the primary took but the standby never got (docs/multi-cluster.md).
//!
//! - **The view** is rebuilt from the standby's `order-updates`, from the beginning, into a new
//!   store: the old one's positions are the primary's offsets, and it may show updates the standby
//!   never received (their commands are decided again there, maybe differently). The new view
//!   equals a rebuild from the standby's `order-updates` by construction.
//! - **The journal** (`--replicated`, [`state::ViewStore::journal`]) of the old view holds every
//!   command sent whose answer the standby may lack: unanswered by the primary's `order-updates`,
//!   or answered there and not known to be copied; its pending marks hold the commands decided
//!   over HTTP and not published yet. Both are carried into the new view, unanswered, before it
//!   reads the standby's `order-updates`, which answers some of them; every one left is sent
//!   again to the standby's `orders`, same command id, in the order first sent. dev-materiels
//!   decides each once (a command its state has seen changes nothing).
//!
//! It swaps the views last and can be run again after any failure: the old view stays until the
//! swap, and a command sent twice is decided once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use state::{JournalEntry, StoreOptions, ViewStore};

use engine::kafka::KafkaArgs;
use engine::runtime::state_dir;

use crate::metrics::WagonLitsMetrics;
use crate::sender::CommandProducer;
use crate::view::{Materialiser, ViewConfig};
use crate::WagonLitsError;

/// What `cluster take-over` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewTakeOver {
    pub cluster_id: String,
    /// Commands carried from the old view: journaled, and decided over HTTP (pending).
    pub journaled: usize,
    pub pending: usize,
    /// Of those, answered by the standby's `order-updates`, and sent again to its `orders`.
    pub answered: usize,
    pub resent: usize,
    /// Orders in the rebuilt view.
    pub orders: usize,
    /// Where the old view was kept.
    pub old_view: Option<PathBuf>,
    pub elapsed: Duration,
}

/// The take-over's settings (brokers: the standby's).
pub struct TakeOver<'a> {
    pub args: &'a crate::WagonLitsArgs,
    pub codec: wire::Codec,
    /// The primary's brokers: if they answer, the take-over refuses unless `force`.
    pub primary: Option<KafkaArgs>,
    pub force: bool,
}

impl TakeOver<'_> {
    pub fn run(&self) -> Result<ViewTakeOver, WagonLitsError> {
        let started = Instant::now();
        if let (Some(primary), false) = (&self.primary, self.force) {
            if primary.check(Duration::from_secs(5)).is_ok() {
                return Err(WagonLitsError::PrimaryAnswers { brokers: primary.brokers.clone() });
            }
        }
        let args = self.args;
        let cluster_id = state_dir::cluster_id(&args.kafka).map_err(|e| WagonLitsError::Cluster(e.to_string()))?;
        let live = args.state_dir.join("view");
        let (mut carried, pending) = if live.exists() {
            let old = ViewStore::open(&live, &StoreOptions::default())?;
            let journal = old.journal_entries()?;
            let pending: Vec<JournalEntry> = old
                .pending_all()
                .into_iter()
                .filter_map(|(_, p)| {
                    p.command.map(|command| JournalEntry { command, sent_ms: p.since_ms, answered: None })
                })
                .collect();
            (journal, pending)
        } else {
            (Vec::new(), Vec::new())
        };
        let journaled = carried.len();
        let next = carried.last().map_or(0, |(sequence, _)| sequence + 1);
        carried.extend(pending.iter().cloned().enumerate().map(|(i, entry)| (next + i as u64, entry)));
        // The new view, beside the old one until the swap.
        let work = args.state_dir.join("take-over");
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|source| io(&work, source))?;
        }
        ViewStore::open(&work.join("view"), &StoreOptions::default())?.carry_journal(&carried)?;
        let mut materialiser = Materialiser::new(
            ViewConfig {
                kafka: args.kafka.clone(),
                updates_topic: args.topics.updates_topic.clone(),
                state_dir: work.clone(),
                max_batch: 5_000,
                codec: self.codec.clone(),
            },
            &StoreOptions::default(),
            WagonLitsMetrics::unregistered().view,
        )?;
        materialiser.catch_up(Duration::from_secs(600))?;
        let view = materialiser.view();
        let left: Vec<(u64, JournalEntry)> =
            view.journal_entries()?.into_iter().filter(|(_, entry)| entry.answered.is_none()).collect();
        let answered = carried.len() - left.len();
        let producer = CommandProducer::new(&args.kafka, &args.topics.orders_topic, Duration::from_secs(30))?
            .with_codec(self.codec.clone());
        let mut deliveries = Vec::with_capacity(left.len());
        for (_, entry) in &left {
            deliveries.push(producer.send(&entry.command)?);
        }
        for (delivery, (_, entry)) in deliveries.into_iter().zip(&left) {
            match futures::executor::block_on(delivery) {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(WagonLitsError::Kafka {
                        context: format!("sending command {} again", entry.command.command_id),
                        source,
                    })
                }
                Err(_) => {
                    return Err(WagonLitsError::Kafka {
                        context: format!("sending command {} again", entry.command.command_id),
                        source: rdkafka::error::KafkaError::Canceled,
                    })
                }
            }
        }
        let orders = view.all()?.len();
        drop(view);
        drop(materialiser);
        let old_view = if live.exists() {
            let kept = args.state_dir.join(format!("view.before-take-over-{}", started_ms()));
            std::fs::rename(&live, &kept).map_err(|source| io(&live, source))?;
            Some(kept)
        } else {
            None
        };
        std::fs::rename(work.join("view"), &live).map_err(|source| io(&live, source))?;
        std::fs::remove_dir_all(&work).map_err(|source| io(&work, source))?;
        state_dir::adopt(&args.state_dir, &cluster_id).map_err(|e| WagonLitsError::Cluster(e.to_string()))?;
        Ok(ViewTakeOver {
            cluster_id,
            journaled,
            pending: pending.len(),
            answered,
            resent: left.len(),
            orders,
            old_view,
            elapsed: started.elapsed(),
        })
    }
}

fn io(path: &Path, source: std::io::Error) -> WagonLitsError {
    WagonLitsError::Io { path: path.to_path_buf(), source }
}

fn started_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
