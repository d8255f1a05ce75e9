//! The crate's one error type. Variants separate what the operator must fix before the host can
//! start (exit code 2) from failures at run time (exit code 1) and one-shot commands a signal
//! ended (128 + the signal's number).

use std::path::PathBuf;

/// Everything that can go wrong in projector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a bad value, or a required one is missing. `key` is the flag, environment
    /// variable or TOML key the operator has to change.
    #[error("{key}: {message}")]
    Config {
        /// The offending setting, as the operator spells it.
        key: String,
        /// What is wrong with it and what is expected.
        message: String,
    },
    /// A plugin file is missing, unreadable, or not a valid projector component.
    #[error("plugin {path}: {message}")]
    Plugin {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The database could not be reached or refused the host at start-up.
    #[error("DATABASE_URL: {0}")]
    Connect(String),
    /// A database statement failed at run time.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else at run time.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    /// A signal (SIGINT, SIGTERM) ended a one-shot command early, after it cleaned up.
    #[error("interrupted by {name}")]
    Interrupted {
        /// The signal's name, `SIGINT` or `SIGTERM`.
        name: &'static str,
        /// Its number: the exit code is 128 + this, as a shell reports a process the signal
        /// killed.
        number: u8,
    },
}

impl Error {
    /// A configuration error about `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The process exit code for this error: 2 for problems the operator must fix in the
    /// invocation or configuration, 128 + the signal's number for an interrupted command (130
    /// for SIGINT, 143 for SIGTERM), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. } | Error::Plugin { .. } | Error::Connect(_) => 2,
            Error::Interrupted { number, .. } => 128 + number,
            _ => 1,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
