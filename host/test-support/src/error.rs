//! What can go wrong driving a child `projector`. Every variant about a child names it (its
//! label) and carries the end of its log, since that is where the reason is.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// A failure of the harness or of the child it drives.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary could not be started.
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        /// The `projector` binary.
        exe: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Setting up around the child failed (its log file, a port, waiting on it).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The host exited while it was expected to run.
    #[error("projector host `{label}` exited ({status}); its log ends:\n{log_tail}")]
    Exited {
        /// The host's label.
        label: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The host did not answer `GET /readyz` with 200 in time.
    #[error(
        "projector host `{label}` was not ready within {timeout:?} (last /readyz: {last:?}); \
         its log ends:\n{log_tail}"
    )]
    NotReady {
        /// The host's label.
        label: String,
        /// How long it was given.
        timeout: Duration,
        /// The last `/readyz` answer (status and body), if anything answered.
        last: Option<(u16, String)>,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A process asked to stop (or expected to exit) was still running.
    #[error("`{label}` was still running {timeout:?} after it should have exited; its output ends:\n{log_tail}")]
    StillRunning {
        /// The host's label, or the one-shot command line.
        label: String,
        /// How long it was given.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The host stopped after SIGTERM, but not with the clean exit it promises.
    #[error(
        "projector host `{label}` stopped with {status} after SIGTERM; its log ends:\n{log_tail}"
    )]
    UncleanStop {
        /// The host's label.
        label: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
