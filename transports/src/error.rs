//! The one error type of oxccl.
//!
//! Every layer (transports, algorithms, the communicator, the C ABI) returns [`Error`]. A
//! transport fills in this rank and the peer; the communicator adds the collective and its
//! sequence number on the way out, so a message reads like
//! `timed out after 10s: receive from peer 3 did not complete (all_reduce #17, rank 2, peer 3)`.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Where an error happened: which collective (and its sequence number), on which rank, with
/// which peer. Every field is optional because not every error has all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The collective or operation, such as `all_reduce` or `init`.
    pub collective: Option<&'static str>,
    /// The communicator's sequence number of that collective (0 for the first).
    pub seq: Option<u64>,
    /// The rank that reports the error.
    pub rank: Option<usize>,
    /// The peer involved, where one is.
    pub peer: Option<usize>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match (self.collective, self.seq) {
            (Some(c), Some(s)) => parts.push(format!("{c} #{s}")),
            (Some(c), None) => parts.push(c.to_string()),
            (None, Some(s)) => parts.push(format!("#{s}")),
            (None, None) => {}
        }
        if let Some(r) = self.rank {
            parts.push(format!("rank {r}"));
        }
        if let Some(p) = self.peer {
            parts.push(format!("peer {p}"));
        }
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, " ({})", parts.join(", "))
        }
    }
}

/// Every failure oxccl reports. Variants say what to do about it:
///
/// | variant | meaning | what to do |
/// | --- | --- | --- |
/// | `InvalidArgument` | a bad argument to this call (length, root, name) | fix the call |
/// | `InvalidUsage` | ranks disagree, or the API is used out of order | fix the program |
/// | `Timeout` | a wait passed its deadline | find the stuck rank (named) |
/// | `PeerLost` | a peer closed its connection or died | restart the job |
/// | `Remote` | a peer reported a failure of its own | look at that peer's log |
/// | `Io` | the operating system refused something | read the OS error |
/// | `Unsupported` | not available in this build or on this machine | use another option |
/// | `Aborted` | [`abort`](crate::Transport::abort) was called | rebuild the communicator |
/// | `Internal` | a bug in oxccl | report it |
///
/// After any error from a collective the communicator is poisoned: it returns the same error
/// from every later call and must be rebuilt.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument: wrong buffer length, root out of range, unknown name.
    #[error("invalid argument: {msg}{ctx}")]
    InvalidArgument {
        /// What was wrong.
        msg: String,
        /// Where.
        ctx: Context,
    },
    /// Ranks disagree (mismatched collectives, counts or types) or the API is misused.
    #[error("invalid usage: {msg}{ctx}")]
    InvalidUsage {
        /// What was wrong.
        msg: String,
        /// Where.
        ctx: Context,
    },
    /// A blocking wait passed its deadline.
    #[error("timed out after {waited:?}: {msg}{ctx}")]
    Timeout {
        /// What was being waited for.
        msg: String,
        /// How long it was waited for.
        waited: Duration,
        /// Where.
        ctx: Context,
    },
    /// A peer went away: its connection closed or reset, or it died.
    #[error("peer lost: {msg}{ctx}")]
    PeerLost {
        /// How it was noticed.
        msg: String,
        /// Where; `ctx.peer` names the lost peer.
        ctx: Context,
    },
    /// A peer reported an error of its own.
    #[error("remote error: {msg}{ctx}")]
    Remote {
        /// What the peer said.
        msg: String,
        /// Where; `ctx.peer` names the reporting peer.
        ctx: Context,
    },
    /// An operating-system call failed.
    #[error("I/O error: {msg}: {source}{ctx}")]
    Io {
        /// What was being done.
        msg: String,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
        /// Where.
        ctx: Context,
    },
    /// Not available in this build or on this machine.
    #[error("unsupported: {msg}{ctx}")]
    Unsupported {
        /// What is missing and what to use instead.
        msg: String,
        /// Where.
        ctx: Context,
    },
    /// The communicator (or transport) was aborted.
    #[error("aborted: {msg}{ctx}")]
    Aborted {
        /// Who aborted.
        msg: String,
        /// Where.
        ctx: Context,
    },
    /// A bug in oxccl.
    #[error("internal error: {msg}{ctx}")]
    Internal {
        /// What went wrong.
        msg: String,
        /// Where.
        ctx: Context,
    },
}

/// The variant of an [`Error`] without its payload, for matching and for the C ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::InvalidArgument`].
    InvalidArgument,
    /// See [`Error::InvalidUsage`].
    InvalidUsage,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::PeerLost`].
    PeerLost,
    /// See [`Error::Remote`].
    Remote,
    /// See [`Error::Io`].
    Io,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::Aborted`].
    Aborted,
    /// See [`Error::Internal`].
    Internal,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::InvalidArgument`].
    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        Error::InvalidArgument { msg: msg.into(), ctx: Context::default() }
    }
    /// A [`Error::InvalidUsage`].
    pub fn invalid_usage(msg: impl Into<String>) -> Self {
        Error::InvalidUsage { msg: msg.into(), ctx: Context::default() }
    }
    /// A [`Error::Timeout`].
    pub fn timeout(msg: impl Into<String>, waited: Duration) -> Self {
        Error::Timeout { msg: msg.into(), waited, ctx: Context::default() }
    }
    /// A [`Error::PeerLost`] naming `peer`.
    pub fn peer_lost(peer: usize, msg: impl Into<String>) -> Self {
        Error::PeerLost { msg: msg.into(), ctx: Context { peer: Some(peer), ..Context::default() } }
    }
    /// A [`Error::Remote`] naming `peer`.
    pub fn remote(peer: usize, msg: impl Into<String>) -> Self {
        Error::Remote { msg: msg.into(), ctx: Context { peer: Some(peer), ..Context::default() } }
    }
    /// A [`Error::Io`].
    pub fn io(msg: impl Into<String>, source: io::Error) -> Self {
        Error::Io { msg: msg.into(), source: Arc::new(source), ctx: Context::default() }
    }
    /// A [`Error::Unsupported`].
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::Unsupported { msg: msg.into(), ctx: Context::default() }
    }
    /// A [`Error::Aborted`].
    pub fn aborted(msg: impl Into<String>) -> Self {
        Error::Aborted { msg: msg.into(), ctx: Context::default() }
    }
    /// A [`Error::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal { msg: msg.into(), ctx: Context::default() }
    }

    /// The variant, without payload.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::InvalidUsage { .. } => ErrorKind::InvalidUsage,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::PeerLost { .. } => ErrorKind::PeerLost,
            Error::Remote { .. } => ErrorKind::Remote,
            Error::Io { .. } => ErrorKind::Io,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Aborted { .. } => ErrorKind::Aborted,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// Where the error happened.
    pub fn context(&self) -> &Context {
        match self {
            Error::InvalidArgument { ctx, .. }
            | Error::InvalidUsage { ctx, .. }
            | Error::Timeout { ctx, .. }
            | Error::PeerLost { ctx, .. }
            | Error::Remote { ctx, .. }
            | Error::Io { ctx, .. }
            | Error::Unsupported { ctx, .. }
            | Error::Aborted { ctx, .. }
            | Error::Internal { ctx, .. } => ctx,
        }
    }

    fn context_mut(&mut self) -> &mut Context {
        match self {
            Error::InvalidArgument { ctx, .. }
            | Error::InvalidUsage { ctx, .. }
            | Error::Timeout { ctx, .. }
            | Error::PeerLost { ctx, .. }
            | Error::Remote { ctx, .. }
            | Error::Io { ctx, .. }
            | Error::Unsupported { ctx, .. }
            | Error::Aborted { ctx, .. }
            | Error::Internal { ctx, .. } => ctx,
        }
    }

    /// The peer the error names, if any.
    pub fn peer(&self) -> Option<usize> {
        self.context().peer
    }

    /// Fills in the collective and its sequence number where they are not set yet.
    #[must_use]
    pub fn in_collective(mut self, collective: &'static str, seq: u64) -> Self {
        let ctx = self.context_mut();
        if ctx.collective.is_none() {
            ctx.collective = Some(collective);
            ctx.seq = Some(seq);
        }
        self
    }

    /// Rewrites the message (to add detail a lower layer could not know).
    #[must_use]
    pub fn map_msg(mut self, f: impl FnOnce(&str) -> String) -> Self {
        match &mut self {
            Error::InvalidArgument { msg, .. }
            | Error::InvalidUsage { msg, .. }
            | Error::Timeout { msg, .. }
            | Error::PeerLost { msg, .. }
            | Error::Remote { msg, .. }
            | Error::Io { msg, .. }
            | Error::Unsupported { msg, .. }
            | Error::Aborted { msg, .. }
            | Error::Internal { msg, .. } => *msg = f(msg),
        }
        self
    }

    /// Fills in this rank where it is not set yet.
    #[must_use]
    pub fn on_rank(mut self, rank: usize) -> Self {
        let ctx = self.context_mut();
        ctx.rank.get_or_insert(rank);
        self
    }

    /// Fills in the peer where it is not set yet.
    #[must_use]
    pub fn with_peer(mut self, peer: usize) -> Self {
        let ctx = self.context_mut();
        ctx.peer.get_or_insert(peer);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_collective_sequence_rank_and_peer() {
        let e = Error::peer_lost(3, "connection reset").in_collective("all_reduce", 17).on_rank(2);
        assert_eq!(e.to_string(), "peer lost: connection reset (all_reduce #17, rank 2, peer 3)");
        assert_eq!(e.kind(), ErrorKind::PeerLost);
        assert_eq!(e.peer(), Some(3));
    }

    #[test]
    fn context_is_filled_once() {
        let e = Error::internal("x").in_collective("a", 1).in_collective("b", 2).on_rank(1).on_rank(5);
        assert_eq!(e.context().collective, Some("a"));
        assert_eq!(e.context().seq, Some(1));
        assert_eq!(e.context().rank, Some(1));
        assert_eq!(Error::invalid_argument("bad").to_string(), "invalid argument: bad");
    }
}
