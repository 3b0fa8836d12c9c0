//! Which Kafka cluster a state directory's stores belong to.
//!
//! A store's positions are offsets of its changelog on one cluster; on another cluster (a
//! standby that MirrorMaker 2 copies to, where offsets differ) they mean nothing, and restoring
//! from them would mix two histories. So the state directory names its cluster (its Kafka
//! cluster id, in [`CLUSTER_FILE`]): a stream thread refuses a directory of another cluster, and
//! `dev-materiels cluster take-over` ([`adopt`]) drops the stores of the old one, to be restored
//! from the new cluster's changelog (docs/multi-cluster.md).

use std::path::{Path, PathBuf};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::RuntimeError;
use crate::kafka::{KafkaArgs, KAFKA_CALL_TIMEOUT};

/// The file naming the cluster, in the state directory.
pub const CLUSTER_FILE: &str = "cluster-id";

/// The id of the cluster `kafka` reaches (KRaft's `cluster.id`).
pub fn cluster_id(kafka: &KafkaArgs) -> Result<String, RuntimeError> {
    let client: BaseConsumer = kafka
        .finish(kafka.base())
        .create()
        .map_err(|source| RuntimeError::Kafka { context: "creating a client".into(), source })?;
    client
        .client()
        .fetch_cluster_id(KAFKA_CALL_TIMEOUT)
        .ok_or(RuntimeError::NoClusterId { brokers: kafka.brokers.clone() })
}

/// The cluster the directory's stores belong to, if it names one.
pub fn recorded(dir: &Path) -> Result<Option<String>, RuntimeError> {
    let path = dir.join(CLUSTER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RuntimeError::Io { path, source }),
    }
}

fn record(dir: &Path, cluster: &str) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io { path: dir.to_path_buf(), source })?;
    let path = dir.join(CLUSTER_FILE);
    std::fs::write(&path, format!("{cluster}\n")).map_err(|source| RuntimeError::Io { path, source })
}

/// Checks that the directory's stores belong to `cluster`, and names it in a directory that
/// names none (a new one, or one of an earlier build).
pub fn claim(dir: &Path, cluster: &str) -> Result<(), RuntimeError> {
    match recorded(dir)? {
        Some(holds) if holds == cluster => Ok(()),
        Some(holds) => Err(RuntimeError::ForeignState { dir: dir.to_path_buf(), holds, brokers: cluster.to_string() }),
        None => record(dir, cluster),
    }
}

/// Makes the directory `cluster`'s: drops the task stores (`partition-<n>`) of any other
/// cluster and names `cluster`. Returns the stores dropped.
pub fn adopt(dir: &Path, cluster: &str) -> Result<Vec<PathBuf>, RuntimeError> {
    if recorded(dir)?.as_deref() == Some(cluster) {
        return Ok(Vec::new());
    }
    let mut dropped = Vec::new();
    if dir.exists() {
        let entries = std::fs::read_dir(dir).map_err(|source| RuntimeError::Io { path: dir.to_path_buf(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| RuntimeError::Io { path: dir.to_path_buf(), source })?;
            if entry.file_name().to_string_lossy().starts_with("partition-") {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(|source| RuntimeError::Io { path: path.clone(), source })?;
                dropped.push(path);
            }
        }
    }
    record(dir, cluster)?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_names_its_cluster_and_refuses_another_until_adopted() {
        let dir = tempfile::tempdir().expect("a temp dir");
        claim(dir.path(), "A").expect("a new directory takes the cluster's name");
        claim(dir.path(), "A").expect("and keeps it");
        std::fs::create_dir_all(dir.path().join("partition-0")).expect("a store");
        std::fs::create_dir_all(dir.path().join("catalogue")).expect("another directory");
        let refused = claim(dir.path(), "B").expect_err("another cluster is refused");
        assert!(refused.to_string().contains("cluster A"), "{refused}");
        let dropped = adopt(dir.path(), "B").expect("adopted");
        assert_eq!(dropped, vec![dir.path().join("partition-0")]);
        assert!(dir.path().join("catalogue").exists(), "only task stores are dropped");
        claim(dir.path(), "B").expect("the directory is B's now");
        assert_eq!(adopt(dir.path(), "B").expect("adopted again"), Vec::<PathBuf>::new());
    }
}
