//! A real schema registry for tests and local runs: Apicurio Registry, the ready application
//! published on Maven Central (`io.apicurio:apicurio-registry-app:<version>:tar.gz:all`),
//! unpacked once by Maven into [`registry_dir`] and started with a Java 21 or newer. In-memory
//! storage: each start is an empty registry. Its Confluent-compatible API is at
//! [`SchemaRegistry::url`].
//!
//! ```no_run
//! let registry = kafka_harness::registry::SchemaRegistry::start()?;
//! println!("{}", registry.url()); // http://127.0.0.1:<port>/apis/ccompat/v7
//! // ... the registry is killed when `registry` is dropped.
//! # Ok::<(), kafka_harness::HarnessError>(())
//! ```

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::maven::fetch_with_maven;
use crate::{cache_root, die_with_parent, free_port, io, HarnessError};

/// The Apicurio Registry release the harness runs (keep in step with `scripts/registry.sh`).
pub const APICURIO_VERSION: &str = "3.3.3";

/// Where the application is unpacked: `$APICURIO_DIR`, or
/// `~/.cache/rail-orders/apicurio-registry-<version>`.
pub fn registry_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("APICURIO_DIR") {
        return PathBuf::from(dir);
    }
    cache_root().join(format!("apicurio-registry-{APICURIO_VERSION}"))
}

/// Makes sure the application is in [`registry_dir`], fetching it with Maven if it is not.
pub fn ensure_registry() -> Result<PathBuf, HarnessError> {
    let dir = registry_dir();
    if dir.join("quarkus-run.jar").is_file() {
        return Ok(dir);
    }
    let artifact = format!("-Dartifact=io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all");
    fetch_with_maven(&dir, &["dependency:unpack", &artifact])?;
    if dir.join("quarkus-run.jar").is_file() {
        Ok(dir)
    } else {
        Err(HarnessError::Maven {
            status: "no quarkus-run.jar after the unpack".into(),
            output: dir.display().to_string(),
        })
    }
}

/// A `java` of version 21 or newer: `$APICURIO_JAVA`, else the newest JDK under `/usr/lib/jvm`
/// whose `release` file says 21 or more.
pub fn java_21() -> Result<PathBuf, HarnessError> {
    if let Some(java) = std::env::var_os("APICURIO_JAVA") {
        return Ok(PathBuf::from(java));
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in fs::read_dir("/usr/lib/jvm").into_iter().flatten().flatten() {
        let home = entry.path();
        let Ok(release) = fs::read_to_string(home.join("release")) else { continue };
        let major = release
            .lines()
            .find_map(|l| l.strip_prefix("JAVA_VERSION="))
            .map(|v| v.trim_matches('"'))
            .and_then(|v| v.split('.').next().and_then(|m| m.parse::<u32>().ok()));
        if let Some(major) = major.filter(|m| *m >= 21) {
            if home.join("bin/java").is_file() {
                found.push((major, home.join("bin/java")));
            }
        }
    }
    found.sort();
    found.pop().map(|(_, java)| java).ok_or_else(|| HarnessError::Io {
        what: "find a Java 21 or newer for the schema registry (none under /usr/lib/jvm; set APICURIO_JAVA)".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// A running Apicurio Registry, killed when dropped, and when the thread that started it ends
/// (like the brokers: `PR_SET_PDEATHSIG`), so that none outlives its test run. A registry shared
/// by several tests is best started from a thread that lives as long as the process.
pub struct SchemaRegistry {
    child: Option<Child>,
    port: u16,
    management_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SchemaRegistry {
    /// Starts a registry on free ports and waits until it is ready (10-15 s here).
    pub fn start() -> Result<SchemaRegistry, HarnessError> {
        SchemaRegistry::start_on(free_port()?)
    }

    /// Starts a registry whose API listens on `port` (a service given that URL before the
    /// registry is up, say).
    pub fn start_on(port: u16) -> Result<SchemaRegistry, HarnessError> {
        let app = ensure_registry()?;
        let java = java_21()?;
        let dir =
            tempfile::Builder::new().prefix("rail-registry-").tempdir().map_err(io("create a temporary directory"))?;
        let management_port = free_port()?;
        let log = dir.path().join("registry.log");
        let out = fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io("clone a file handle"))?;
        let mut command = Command::new(&java);
        command
            .arg("-Xmx384m")
            .arg(format!("-Dquarkus.http.port={port}"))
            .arg("-Dquarkus.http.host=127.0.0.1")
            .arg(format!("-Dquarkus.management.port={management_port}"))
            .arg("-Dquarkus.management.host=127.0.0.1")
            .arg("-jar")
            .arg(app.join("quarkus-run.jar"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(io(format!("start {}", java.display())))?;
        let mut registry = SchemaRegistry { child: Some(child), port, management_port, log, _dir: dir };
        registry.wait_ready(Duration::from_secs(120))?;
        Ok(registry)
    }

    /// The Confluent-compatible API: `http://127.0.0.1:<port>/apis/ccompat/v7`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its output goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    fn wait_ready(&mut self, patience: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        while started.elapsed() < patience {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(self.not_ready(started.elapsed(), &format!("exited with {status}")));
                }
            }
            if http_status(self.management_port, "/health/ready") == Some(200)
                && http_status(self.port, "/apis/ccompat/v7/subjects") == Some(200)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(self.not_ready(patience, "not ready"))
    }

    fn not_ready(&self, waited: Duration, what: &str) -> HarnessError {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        HarnessError::Tool {
            tool: format!("Apicurio Registry on port {} ({what} after {waited:?})", self.port),
            status: what.into(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    /// Freezes the registry (SIGSTOP): connections are accepted by the kernel, nothing answers.
    /// Unlike a restart, it keeps what it holds (its storage is in memory).
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            crate::signal(child, libc::SIGSTOP);
        }
    }

    /// Thaws the registry (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            crate::signal(child, libc::SIGCONT);
        }
    }

    /// Kills the registry (SIGKILL) and waits for it: its API stops answering.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status of `GET path` on 127.0.0.1:`port`, if it answers within a second.
pub(crate) fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}
