//! Kafka client settings from flags and environment, and the client builder every Kafka client
//! of the services starts from.

use std::time::Duration;

use clap::Args;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Extra librdkafka client setting, `key=value`; repeat the flag for several, or separate them
    /// with `;` in the environment variable. Applied to every client of the service, after its own
    /// settings. Values are never shown in this help.
    #[arg(long = "kafka-option", env = "KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ';', value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
    /// How clients talk to the brokers: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long = "kafka-security-protocol", env = "KAFKA_SECURITY_PROTOCOL", default_value = "plaintext")]
    pub security_protocol: String,
    /// SASL mechanism (with a sasl_* protocol).
    #[arg(long = "kafka-sasl-mechanism", env = "KAFKA_SASL_MECHANISM", default_value = "SCRAM-SHA-256")]
    pub sasl_mechanism: String,
    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// SASL password. Prefer --kafka-sasl-password-file; never printed.
    #[arg(long = "kafka-sasl-password", env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
    /// File holding the SASL password.
    #[arg(long = "kafka-sasl-password-file", env = "KAFKA_SASL_PASSWORD_FILE", value_parser = read_password_file)]
    pub sasl_password_file: Option<FilePassword>,
    /// CA certificate(s) to verify the brokers with (with an ssl protocol).
    #[arg(long = "kafka-ssl-ca", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca: Option<std::path::PathBuf>,
}

/// A password read from a file when the flags are parsed: a file that cannot be read stops the
/// service at once, with its reason, rather than leaving it without a password.
#[derive(Clone)]
pub struct FilePassword(String);

impl std::fmt::Debug for FilePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilePassword(..)")
    }
}

fn read_password_file(path: &str) -> Result<FilePassword, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the password file {path}: {e}"))?;
    let password = text.trim();
    if password.is_empty() {
        return Err(format!("the password file {path} is empty"));
    }
    Ok(FilePassword(password.to_string()))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

impl KafkaArgs {
    pub fn new(brokers: impl Into<String>) -> KafkaArgs {
        KafkaArgs {
            brokers: brokers.into(),
            options: Vec::new(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: "SCRAM-SHA-256".into(),
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca: None,
        }
    }

    /// The SASL password, from the flag, the environment or the file.
    fn sasl_password(&self) -> Option<String> {
        match (&self.sasl_password, &self.sasl_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(file)) => Some(file.0.clone()),
            (None, None) => None,
        }
    }

    /// A client configuration with the brokers and security set. Apply [`KafkaArgs::finish`]
    /// after the caller's own settings so the user's `--kafka-option`s win.
    pub fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // TCP_NODELAY, as the Java client sets it: small requests (the ones that end a
        // transaction) are not held back by Nagle's algorithm. (It did not move the end-to-end
        // latency measured in docs/benchmarks.md, which a ~100 ms commit inside librdkafka sets.)
        config.set("socket.nagle.disable", "true");
        config.set("security.protocol", &self.security_protocol);
        if self.security_protocol.starts_with("sasl") {
            config.set("sasl.mechanism", &self.sasl_mechanism);
            if let Some(user) = &self.sasl_username {
                config.set("sasl.username", user);
            }
            if let Some(password) = self.sasl_password() {
                config.set("sasl.password", password);
            }
        }
        if let Some(ca) = &self.ssl_ca {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        config
    }

    /// [`KafkaArgs::base`] for a consumer that reads as fast as it can (the stream thread's, the
    /// restores', the view's): librdkafka's fetch-queue backoff cut to
    /// [`FETCH_QUEUE_BACKOFF_MS`].
    pub fn consumer_base(&self) -> ClientConfig {
        let mut config = self.base();
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string());
        config
    }

    /// Checks that the brokers answer and accept the credentials, within `timeout`. A refused
    /// login is an error at once, not a hang; brokers that do not answer are an error too.
    pub fn check(&self, timeout: Duration) -> Result<(), ConnectError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let context = ErrorCapture(std::sync::Arc::clone(&seen));
        let client: BaseConsumer<ErrorCapture> =
            self.finish(self.base()).create_with_context(context).map_err(|e| ConnectError::Config(e.to_string()))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let step = Duration::from_millis(500).min(deadline.saturating_duration_since(std::time::Instant::now()));
            if client.fetch_metadata(None, step).is_ok() {
                return Ok(());
            }
            // Serve the client's events: authentication failures arrive as errors there.
            if let Some(Err(err)) = client.poll(Duration::from_millis(50)) {
                ClientContext::error(client.context().as_ref(), err, "");
            }
            let errors = seen.lock().map(|e| e.clone()).unwrap_or_default();
            if let Some(reason) = errors.iter().find(|(auth, _)| *auth).map(|(_, r)| r.clone()) {
                return Err(ConnectError::Authentication {
                    user: self.sasl_username.clone().unwrap_or_default(),
                    mechanism: self.sasl_mechanism.clone(),
                    reason,
                });
            }
            if std::time::Instant::now() >= deadline {
                let last = errors.last().map(|(_, r)| r.clone()).unwrap_or_else(|| "no answer".into());
                return Err(ConnectError::Unreachable { brokers: self.brokers.clone(), waited: timeout, reason: last });
            }
        }
    }

    /// Applies the user's extra options on top of `config`.
    pub fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }
}

/// Why a service could not talk to Kafka at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Kafka refused the credentials of user {user:?} ({mechanism}): {reason}")]
    Authentication { user: String, mechanism: String, reason: String },
    #[error("no Kafka broker at {brokers} answered within {waited:?}: {reason}")]
    Unreachable { brokers: String, waited: Duration, reason: String },
    #[error("invalid Kafka client settings: {0}")]
    Config(String),
}

/// Records the errors librdkafka reports while a client connects: (is an authentication
/// failure, reason). Reasons never contain the password.
struct ErrorCapture(std::sync::Arc<std::sync::Mutex<Vec<(bool, String)>>>);

impl ClientContext for ErrorCapture {
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        let auth = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) || ErrorCapture::is_auth(reason)
            || ErrorCapture::is_auth(&error.to_string());
        if let Ok(mut seen) = self.0.lock() {
            let reason = if reason.is_empty() { error.to_string() } else { reason.to_string() };
            seen.push((auth, reason));
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if ErrorCapture::is_auth(message) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push((true, message.to_string()));
            }
        } else if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
            tracing::debug!(fac, message, "librdkafka");
        }
    }
}

impl ErrorCapture {
    fn is_auth(reason: &str) -> bool {
        reason.contains("Authentication failed") || reason.contains("SASL authentication error")
    }
}

impl ConsumerContext for ErrorCapture {}

/// How long to wait for Kafka in blocking admin and transactional calls.
pub const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long librdkafka waits before it fetches a partition again once the consumer's local
/// queue is over its bounds (`queued.max.messages.kbytes`, `queued.min.messages`), in
/// milliseconds. Its default, 1,000, left the stream thread without records for up to a second
/// at a time: once its bounded 8 MiB queue filled, no fetch went out until the second was over,
/// though the thread drains the queue in well under that (librdkafka's documentation says to
/// lower it in that case). 10 ms: +30-40% commands/s in the end-to-end A/B (docs/benchmarks.md,
/// 2026-12-08).
pub const FETCH_QUEUE_BACKOFF_MS: u32 = 10;

/// The context of a consumer that reads partitions to their end with `enable.partition.eof`
/// (restores, standby copies, global tables, checkers). librdkafka reports each end reached as an
/// event, and rust-rdkafka also hands it to the client's error callback, as a global error
/// (fede1024/rust-rdkafka#820), where the default context logs it at error level: "Global
/// error: PartitionEOF". The end of a partition is not an error; other errors are logged.
pub struct ReadToEndContext;

impl ClientContext for ReadToEndContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF));
        if !eof {
            tracing::warn!(%error, reason, "Kafka consumer error");
        }
    }
}

impl ConsumerContext for ReadToEndContext {}
