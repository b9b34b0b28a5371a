//! [`ClientError`]: every way reaching a server can fail, each naming the endpoint (password
//! masked) and saying what to do.

/// A failure to reach, log in to, or talk to a server. The message includes the underlying
/// error, so it is not chained as a `source` too (`{:#}` would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {endpoint}: {cause}")]
    Resolve {
        endpoint: String,
        cause: std::io::Error,
    },
    #[error("cannot connect to {endpoint}: {cause}")]
    Connect {
        endpoint: String,
        cause: std::io::Error,
    },
    #[error("{endpoint} did not answer {what} within {ms} ms{hint}")]
    Timeout {
        endpoint: String,
        what: &'static str,
        ms: u64,
        /// Empty, or a suggestion (" (…)").
        hint: String,
    },
    #[error("TLS to {endpoint} failed: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("TLS settings of {endpoint} are not usable: {reason}")]
    TlsSetup { endpoint: String, reason: String },
    #[error("connection to {endpoint} failed: {cause}{hint}")]
    Io {
        endpoint: String,
        cause: std::io::Error,
        hint: String,
    },
    #[error("{endpoint} refused {command}: {reply}")]
    Refused {
        endpoint: String,
        command: String,
        reply: String,
    },
    #[error("{endpoint} sent an invalid reply: {detail}")]
    Protocol { endpoint: String, detail: String },
    /// An exchange on an established connection ran out of time (the connection's time
    /// limit, or the caller's deadline); the connection is not used again.
    #[error("{endpoint} did not answer {what} in time ({ms} ms)")]
    Deadline {
        endpoint: String,
        /// The command's name, or "a reply" / "a write" inside a pipeline.
        what: String,
        ms: u64,
    },
    /// An earlier exchange on this connection ran out of time: a late reply could be taken
    /// for the next command's, so the connection is not used again.
    #[error("an earlier command to {endpoint} was not answered in time; open a new connection")]
    Unusable { endpoint: String },
}

/// The controller's steps report their failures as text (shown in `STATUS` and in refused
/// moves); this lets them use `?` on a client call.
impl From<ClientError> for String {
    fn from(e: ClientError) -> String {
        e.to_string()
    }
}

impl ClientError {
    /// Worth trying again later (with back-off): the network, a server restarting, a server
    /// busy loading. Wrong certificates, wrong settings, refused credentials and protocol
    /// violations are not: they stay wrong until someone changes something.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Resolve { .. }
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Deadline { .. }
            | ClientError::Unusable { .. }
            | ClientError::Io { .. } => true,
            ClientError::Refused { reply, .. } => ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"]
                .iter()
                .any(|p| reply.trim_start_matches('-').starts_with(p)),
            ClientError::Tls { .. }
            | ClientError::TlsSetup { .. }
            | ClientError::Protocol { .. } => false,
        }
    }

    /// A refused `AUTH` (wrong password or user).
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Refused { command, .. } if command == "AUTH")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        let refused = |reply: &str| ClientError::Refused {
            endpoint: "redis://h:1/0".into(),
            command: "SELECT".into(),
            reply: reply.into(),
        };
        assert!(refused("-LOADING Redis is loading").retryable());
        assert!(!refused("-ERR DB index is out of range").retryable());
        let tls = ClientError::Tls {
            endpoint: "rediss://h:1/0".into(),
            reason: "unknown CA".into(),
        };
        assert!(!tls.retryable());
        assert!(tls.to_string().contains("rediss://h:1/0"));
        let io = ClientError::Io {
            endpoint: "redis://***@h:1/0".into(),
            cause: std::io::ErrorKind::ConnectionReset.into(),
            hint: String::new(),
        };
        assert!(io.retryable());
    }
}
