//! A real PostgreSQL for tests and local runs: a new cluster (`initdb`) in a temporary
//! directory, started on a free port of 127.0.0.1 with `wal_level=logical` (what Debezium's
//! `pgoutput` capture needs), user `postgres`, trust authentication. Run as root, the server runs
//! as the `postgres` system user (PostgreSQL refuses to run as root).
//!
//! ```no_run
//! let mut pg = kafka_harness::postgres::Postgres::start()?;
//! pg.psql("create table t (id int primary key)")?;
//! pg.restart()?; // a fast shutdown and a start on the same data and port
//! # Ok::<(), kafka_harness::HarnessError>(())
//! ```

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{die_with_parent, free_port, io, signal, tail, HarnessError};

/// The directory with `initdb` and `postgres`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin`, else the one `postgres` is found in on `PATH`.
pub fn bin_dir() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("postgres").is_file() && dir.join("initdb").is_file())
        .ok_or_else(|| HarnessError::Io {
            what: "find PostgreSQL's initdb and postgres (scripts/setup.sh installs them; or set PG_BIN)".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

/// `psql`: beside the server, or on `PATH`.
fn psql_path(bin: &Path) -> PathBuf {
    let beside = bin.join("psql");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("psql")
    }
}

/// The `postgres` system user's uid and gid, when this process is root.
fn server_user() -> Result<Option<(u32, u32)>, HarnessError> {
    if !is_root() {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io("read /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| HarnessError::Io {
            what: "run PostgreSQL as root: it refuses; a `postgres` system user is needed (scripts/setup.sh)".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

#[allow(unsafe_code)] // geteuid: a plain system call without arguments.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A running PostgreSQL server, killed when dropped (and when the thread that started it ends).
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates a cluster and starts it (a few seconds).
    pub fn start() -> Result<Postgres, HarnessError> {
        let bin = bin_dir()?;
        let user = server_user()?;
        let dir = tempfile::Builder::new().prefix("rail-postgres-").tempdir().map_err(io("create a temp dir"))?;
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(io("give the temp dir to postgres"))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let output = initdb.output().map_err(io("run initdb"))?;
        if !output.status.success() {
            return Err(HarnessError::Tool {
                tool: "initdb".into(),
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let log = dir.path().join("postgres.log");
        let mut pg = Postgres { child: None, port: free_port()?, bin, data, user, log, _dir: dir };
        pg.spawn()?;
        Ok(pg)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let out = fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(io("open postgres.log"))?;
        let err = out.try_clone().map_err(io("clone a file handle"))?;
        let socket_dir = self.data.parent().unwrap_or(&self.data).to_path_buf();
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "wal_level=logical"])
            .args(["-c", "fsync=off", "-c", "max_connections=50", "-k"])
            .arg(&socket_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        die_with_parent(&mut command);
        self.child = Some(command.spawn().map_err(io("start postgres"))?);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, patience: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            if self.psql("select 1").is_ok() {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > patience {
                return Err(HarnessError::Tool {
                    tool: format!("postgres on port {}", self.port),
                    status: exited.map_or_else(|| "not ready".to_string(), |s| s.to_string()),
                    output: tail(&self.log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `jdbc:postgresql://127.0.0.1:<port>/postgres`.
    pub fn jdbc_url(&self) -> String {
        format!("jdbc:postgresql://127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Runs SQL with `psql` (stops at the first error) and returns its output, unaligned and
    /// without headers: one line per row, columns separated by `|`.
    pub fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        self.psql_in("postgres", sql)
    }

    /// [`Postgres::psql`] in database `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, HarnessError> {
        let output = Command::new(psql_path(&self.bin))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(io("run psql (scripts/setup.sh installs it)"))?;
        if !output.status.success() {
            return Err(HarnessError::Tool {
                tool: "psql".into(),
                status: output.status.to_string(),
                output: format!("{sql}\n{}", String::from_utf8_lossy(&output.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are disconnected, what is
    /// committed stays) and starts it again on the same data and port.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGINT);
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
