//! The phases of a sync, as one type: what `cutover status` prints (`phase`), what the
//! `cutover_sync_phase{direction}` gauge holds, and which move from one to the next is
//! possible.
//!
//! ```text
//!              +FULLRESYNC                 snapshot loaded
//! connecting ─────────────► syncing ───────────────────────► streaming
//!      │                     ▲   │ ▲ (full resync: the link      │
//!      │ +CONTINUE           │   └─┘  dropped mid-snapshot)      │
//!      └─────────────────────┼───────────────────────────────────►
//!                            └───────────────────────────────────┘
//!                              full resync within the run (the source could not continue)
//! any ──(the run failed; the retry loop waits)──► sync_error ──(a new run)──► any
//! ```
//!
//! The names and numbers are an interface: status JSON, tests, the Grafana dashboard and the
//! Prometheus rules in `config/` read them (`cutover_sync_phase == 3` is an alert). The
//! cutover's own phases continue the numbering (4 switched, 5 rolled back, 6 finished; see
//! `cutover::Phase`), so one panel can show `cutover_phase or cutover_sync_phase`.

/// Where one sync engine stands. Stored in [`super::engine::SyncProgress`] as its
/// [`SyncPhase::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPhase {
    /// Waiting for the source to answer `PSYNC` (also the state before the first run).
    Connecting,
    /// The snapshot is being received and loaded (`syncing`).
    Snapshot,
    /// The snapshot is loaded (or the source continued a stored position): the live stream
    /// is applied.
    Streaming,
    /// The last run failed; the retry loop runs it again (`sync_error`).
    Error,
}

impl SyncPhase {
    /// Every phase, in the order of their numbers.
    pub const ALL: [SyncPhase; 4] = [
        SyncPhase::Connecting,
        SyncPhase::Snapshot,
        SyncPhase::Streaming,
        SyncPhase::Error,
    ];

    /// Its number: the value stored in [`super::engine::SyncProgress::phase`] and of the
    /// `cutover_sync_phase` gauge.
    pub const fn code(self) -> u8 {
        match self {
            SyncPhase::Connecting => 0,
            SyncPhase::Snapshot => 1,
            SyncPhase::Streaming => 2,
            SyncPhase::Error => 3,
        }
    }

    /// The phase of a stored number (an unknown one reads as an error, as it always did).
    pub const fn from_code(code: u8) -> SyncPhase {
        match code {
            0 => SyncPhase::Connecting,
            1 => SyncPhase::Snapshot,
            2 => SyncPhase::Streaming,
            _ => SyncPhase::Error,
        }
    }

    /// Its name in `cutover status` (`phase`).
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncPhase::Connecting => "connecting",
            SyncPhase::Snapshot => "syncing",
            SyncPhase::Streaming => "streaming",
            SyncPhase::Error => "sync_error",
        }
    }

    /// The value of the `cutover_sync_phase` gauge.
    pub fn gauge(self) -> f64 {
        f64::from(self.code())
    }

    /// Whether a run may move from `self` to `next` (staying is always allowed):
    ///
    /// * `connecting` → `syncing` (`+FULLRESYNC`) or `streaming` (`+CONTINUE`);
    /// * `syncing` → `streaming` (snapshot loaded) or `syncing` again (the link dropped
    ///   during the snapshot: a new full sync);
    /// * `streaming` → `syncing` (a full resync within the run);
    /// * any → `sync_error` (the run failed), and `sync_error` → any (a new run reports
    ///   where its link starts).
    pub fn allows(self, next: SyncPhase) -> bool {
        use SyncPhase::*;
        match (self, next) {
            (a, b) if a == b => true,
            (_, Error) | (Error, _) => true,
            (Connecting, Snapshot | Streaming) => true,
            (Snapshot, Streaming) => true,
            (Streaming, Snapshot) => true,
            _ => false,
        }
    }

    /// The phase after a move to `next`, which must be allowed ([`Self::allows`]): checked
    /// in debug builds, logged otherwise (the move is made anyway, as before this check).
    pub fn move_to(self, next: SyncPhase) -> SyncPhase {
        if !self.allows(next) {
            debug_assert!(
                false,
                "sync phase {self:?} → {next:?} is not a move it makes"
            );
            tracing::warn!(
                from = self.as_str(),
                to = next.as_str(),
                "unexpected sync phase move"
            );
        }
        next
    }
}

impl std::fmt::Display for SyncPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_stay() {
        // Status JSON, tests and config/grafana + config/prometheus read these.
        let names: Vec<_> = SyncPhase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["connecting", "syncing", "streaming", "sync_error"]);
        for (i, p) in SyncPhase::ALL.iter().enumerate() {
            assert_eq!(p.code() as usize, i);
            assert_eq!(SyncPhase::from_code(p.code()), *p);
            assert_eq!(p.gauge(), i as f64);
        }
        assert_eq!(SyncPhase::from_code(200), SyncPhase::Error);
    }

    #[test]
    fn moves() {
        use SyncPhase::*;
        assert!(Connecting.allows(Snapshot));
        assert!(Connecting.allows(Streaming));
        assert!(Snapshot.allows(Streaming));
        assert!(Snapshot.allows(Snapshot));
        assert!(Streaming.allows(Snapshot));
        assert!(!Streaming.allows(Connecting));
        assert!(!Snapshot.allows(Connecting));
        for p in SyncPhase::ALL {
            assert!(p.allows(Error));
            assert!(Error.allows(p));
        }
    }
}
