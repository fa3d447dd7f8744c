//! Server settings: a TOML file, then environment overrides, then command-line flags.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ServerError;

/// How the server writes its operator log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Server settings. Read with [`ServerConfig::load`]; every field has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (`VEIL_LISTEN`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The data directory: store, datasets, keys (`VEIL_DATA_DIR`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Job workers: jobs run at the same time (`VEIL_WORKERS`). The cores are shared out among
    /// them: each job runs its privacy units on `cores / workers` threads (at least one).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Largest dataset upload accepted, in bytes (`VEIL_MAX_UPLOAD_BYTES`).
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Largest other request body (a job with its module, base64-encoded), in bytes
    /// (`VEIL_MAX_REQUEST_BYTES`); read only after the request's token is checked.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Memory all buffered request bodies (every route but uploads) may take at once, in bytes
    /// (`VEIL_MAX_BUFFERED_BYTES`). A body reserves its declared length (or the whole request
    /// limit when it declares none) before it is read; when nothing is left the request is
    /// answered 503 `unavailable` at once. At least `max_request_bytes`.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Connections open at once (`VEIL_MAX_CONNECTIONS`). Past it, new connections wait in the
    /// kernel's backlog, unaccepted, until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may stay silent while it sends (`VEIL_IDLE_TIMEOUT_SECS`): a connection
    /// without a complete request head by then is closed, a body without a byte by then is
    /// answered 408. Never applied while a request is being answered.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Jobs one consumer may have queued, awaiting approval or running at once; more are answered
    /// 429 `busy` (`VEIL_MAX_OPEN_JOBS`).
    #[serde(default = "default_max_open_jobs")]
    pub max_open_jobs: u64,
    /// On SIGTERM, how long running jobs may take to finish before they are closed as failed
    /// (`VEIL_SHUTDOWN_GRACE_SECS`).
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// `text` or `json` (`VEIL_LOG_FORMAT`).
    #[serde(default = "default_log_format")]
    pub log_format: LogFormat,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8420".parse().expect("valid address")
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./veil-data")
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_max_upload_bytes() -> u64 {
    1 << 30
}
fn default_max_request_bytes() -> usize {
    64 << 20
}
fn default_max_buffered_bytes() -> usize {
    256 << 20
}
fn default_max_connections() -> usize {
    256
}
fn default_idle_timeout_secs() -> u64 {
    30
}
fn default_max_open_jobs() -> u64 {
    64
}
fn default_shutdown_grace_secs() -> u64 {
    30
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            data_dir: default_data_dir(),
            workers: default_workers(),
            max_upload_bytes: default_max_upload_bytes(),
            max_request_bytes: default_max_request_bytes(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_connections: default_max_connections(),
            idle_timeout_secs: default_idle_timeout_secs(),
            max_open_jobs: default_max_open_jobs(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            log_format: default_log_format(),
        }
    }
}

impl ServerConfig {
    /// Reads the optional config file, then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<ServerConfig, ServerError> {
        let mut config = match path {
            Some(path) => {
                let err = |message: String| ServerError::Config {
                    path: path.display().to_string(),
                    message,
                };
                let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                toml::from_str(&text).map_err(|e| err(e.to_string()))?
            }
            None => ServerConfig::default(),
        };
        if let Some(v) = env("VEIL_LISTEN") {
            config.listen = v.parse().map_err(|e| ServerError::Env {
                name: "VEIL_LISTEN",
                message: format!("{e}"),
            })?;
        }
        if let Some(v) = env("VEIL_DATA_DIR") {
            config.data_dir = v.into();
        }
        if let Some(v) = env("VEIL_WORKERS") {
            config.workers = positive("VEIL_WORKERS", &v)? as usize;
        }
        if let Some(v) = env("VEIL_MAX_UPLOAD_BYTES") {
            config.max_upload_bytes = positive("VEIL_MAX_UPLOAD_BYTES", &v)?;
        }
        if let Some(v) = env("VEIL_MAX_REQUEST_BYTES") {
            config.max_request_bytes = positive("VEIL_MAX_REQUEST_BYTES", &v)? as usize;
        }
        if let Some(v) = env("VEIL_MAX_BUFFERED_BYTES") {
            config.max_buffered_bytes = positive("VEIL_MAX_BUFFERED_BYTES", &v)? as usize;
        }
        if let Some(v) = env("VEIL_MAX_CONNECTIONS") {
            config.max_connections = positive("VEIL_MAX_CONNECTIONS", &v)? as usize;
        }
        if let Some(v) = env("VEIL_IDLE_TIMEOUT_SECS") {
            config.idle_timeout_secs = positive("VEIL_IDLE_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = env("VEIL_MAX_OPEN_JOBS") {
            config.max_open_jobs = positive("VEIL_MAX_OPEN_JOBS", &v)?;
        }
        if let Some(v) = env("VEIL_SHUTDOWN_GRACE_SECS") {
            config.shutdown_grace_secs = v.parse().map_err(|_| ServerError::Env {
                name: "VEIL_SHUTDOWN_GRACE_SECS",
                message: "must be a whole number of seconds".into(),
            })?;
        }
        if let Some(v) = env("VEIL_LOG_FORMAT") {
            config.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ServerError::Env {
                        name: "VEIL_LOG_FORMAT",
                        message: "must be `text` or `json`".into(),
                    });
                }
            };
        }
        config.check().map_err(|message| ServerError::Config {
            path: path.map_or("(defaults)".into(), |p| p.display().to_string()),
            message,
        })?;
        Ok(config)
    }

    /// The settings' relations that no single field's type states.
    fn check(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.max_connections == 0 || self.idle_timeout_secs == 0 {
            return Err("max_connections and idle_timeout_secs must be at least 1".into());
        }
        if self.max_buffered_bytes < self.max_request_bytes {
            return Err(format!(
                "max_buffered_bytes ({}) must be at least max_request_bytes ({}), or no request \
                 of the largest size could ever be read",
                self.max_buffered_bytes, self.max_request_bytes
            ));
        }
        Ok(())
    }

    /// How long a client may stay silent while it sends.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn positive(name: &'static str, v: &str) -> Result<u64, ServerError> {
    v.parse().ok().filter(|n| *n > 0).ok_or(ServerError::Env {
        name,
        message: "must be a positive integer".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/veil.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config: ServerConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8420".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/veil"));
        assert_eq!(config.workers, 2);
        assert_eq!(config.max_upload_bytes, 4 << 30);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.max_open_jobs, 64);
        assert_eq!(config.max_buffered_bytes, 256 << 20);
        assert_eq!(config.max_connections, 256);
        assert_eq!(config.idle_timeout_secs, 30);
        assert_eq!(config.check(), Ok(()));
        // A body budget smaller than one request could never read the largest request.
        let small = ServerConfig {
            max_buffered_bytes: 1024,
            ..config.clone()
        };
        let err = small.check().unwrap_err();
        assert!(err.contains("max_buffered_bytes (1024)"), "{err}");
        // Unknown fields are errors that name the field.
        let err = toml::from_str::<ServerConfig>("listen = \"127.0.0.1:1\"\nworkerz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workerz"), "{err}");
        assert!(matches!(
            ServerConfig::load(Some(Path::new("/nonexistent/veil.toml"))),
            Err(ServerError::Config { .. })
        ));
    }
}
