//! Running the sync again after a failure: one restart loop for headless `cutover sync` and
//! for the background sync of `cutover run`.
//!
//! A run of the engine fails when the target goes away (restart, dropped connection,
//! timeout, `-LOADING` while it reloads its data) or when the source cannot be reached for
//! long (the replica link reconnects by itself within a run). The next run resumes from the
//! position stored on the target ([`super::batch`]): a batch is applied together with its
//! position or not at all, so nothing is lost and nothing applied twice. If the target lost
//! its data (and the position with it), the next run is a full sync (the target is flushed
//! and loaded anew), which is exact too.
//!
//! Failures are classified ([`classify`]): what a wait can cure is retried with exponential
//! back-off (1 s doubling to 30 s); a configuration or data problem (wrong password, a
//! target that refuses writes, `unsupported = fail`, the `cutover:switched` marker) is not:
//! waiting would not change it, and the user must act. A target or source that cannot even be
//! connected to on the first run is taken as a wrong address (not retried either).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::{EngineError, RunContext, SyncOptions, SyncReport, run_with, say};
use super::target::TargetError;
use crate::client::ClientError;

/// Back-off before the first retry.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a failed run is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A wait can cure it (the target restarting, a dropped connection, a timeout, `LOADING`,
    /// `BUSY`): run again.
    Retry,
    /// The connection could not be made: retried once a run of this process got going (the
    /// address worked before), otherwise taken as a wrong address.
    Connect,
    /// Waiting does not help (configuration, refused data, `unsupported = fail`…).
    Permanent,
    /// A stream command was not applied under `cutover run`: the link stops for good, even
    /// where permanent failures are retried ([`super::refusals`]).
    Stop,
}

/// Classifies the error of a failed run.
pub fn classify(e: &anyhow::Error) -> Class {
    for cause in e.chain() {
        if let Some(t) = cause.downcast_ref::<TargetError>() {
            return match t {
                TargetError::Connect { .. } => Class::Connect,
                TargetError::Client(c) => match c {
                    ClientError::Resolve { .. }
                    | ClientError::Connect { .. }
                    | ClientError::Timeout { .. } => Class::Connect,
                    c if c.retryable() => Class::Retry,
                    _ => Class::Permanent,
                },
                TargetError::Io { .. } => Class::Retry,
                TargetError::Refused { reply, .. } if transient_reply(reply) => Class::Retry,
                TargetError::Unapplied { .. } => Class::Stop,
                TargetError::Refused { .. }
                | TargetError::Protocol { .. }
                | TargetError::Unsupported { .. }
                | TargetError::CannotHold { .. }
                | TargetError::NoSuchDb { .. }
                | TargetError::NoRoom { .. } => Class::Permanent,
            };
        }
        if let Some(EngineError::SourceLink { transient, .. }) = cause.downcast_ref() {
            return if *transient {
                Class::Connect
            } else {
                Class::Permanent
            };
        }
    }
    Class::Permanent
}

/// The error and its causes, each once (a cause whose text its parent already shows is
/// left out).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Error replies (without the `-`) that say "not now" rather than "no" (out of memory, not
/// enough replicas, a running script, loading…: [`crate::command::obey::refusal_kind`]).
fn transient_reply(reply: &str) -> bool {
    crate::command::obey::refusal_kind(reply) == crate::command::obey::RefusalKind::Transient
}

/// What [`run_retrying`] does with failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up once runs keep failing for this long without one getting going (`None`:
    /// never).
    pub give_up_after: Option<Duration>,
    /// Retry permanent failures too (with the same back-off, 1 s doubling to 30 s): `cutover
    /// run` keeps its links going for as long as the process lives (a link of the overlap
    /// whose side refused writes — out of memory — must come back soon after it is cured),
    /// and shows the error in `status`.
    pub retry_permanent: bool,
}

/// Runs the engine until it returns (with `once`, on a stop, or at the cutover barrier's
/// offset), running it again after each failure that waiting may cure. Between runs the
/// phase is `sync_error` with `last_error` and `retry_in_s` set; a stop request (Ctrl-C)
/// during the wait ends it at once with the counts of the runs so far.
pub fn run_retrying(
    opts: &SyncOptions,
    policy: RetryPolicy,
    ctx: &RunContext,
) -> anyhow::Result<SyncReport> {
    let progress = &ctx.progress;
    let headless = opts.shared.is_none();
    let mut backoff = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    loop {
        progress.starts.fetch_add(1, Ordering::Relaxed);
        let established_before = progress.established.load(Ordering::Relaxed);
        let e = match run_with(opts, ctx) {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        let established = progress.established.load(Ordering::Relaxed);
        if established > established_before {
            // This run got going before it failed: a new outage.
            failing_since = None;
            backoff = FIRST_BACKOFF;
        }
        let class = classify(&e);
        let retry = match class {
            Class::Retry => true,
            // (`cutover run` keeps trying: the servers may come up after the proxy.)
            Class::Connect => established > 0 || policy.retry_permanent,
            Class::Permanent | Class::Stop => false,
        };
        let msg = error_text(&e);
        if let Ok(mut last) = progress.last_error.lock() {
            *last = Some(msg.clone());
        }
        progress.set_phase(super::phase::SyncPhase::Error);
        if class == Class::Stop && !progress.refusals.halted() {
            // (Found by the target writer, which does not see the record.)
            progress.refusals.record(super::refusals::Unapplied {
                command: msg.clone(),
                key: String::new(),
                reason: String::new(),
            });
            progress.refusals.halt();
        }
        if !retry && (!policy.retry_permanent || class == Class::Stop) {
            return Err(e);
        }
        // A batch the target refuses for now (out of memory, a script running, too few
        // replicas): the next run applies it again, in order, from the stored position.
        if class == Class::Retry && msg.contains("OOM") {
            progress.refusals.count_oom();
        }
        progress.refusals.set_waiting(match &class {
            Class::Retry => Some(msg.clone()),
            _ => None,
        });
        let since = *failing_since.get_or_insert_with(Instant::now);
        if let Some(limit) = policy.give_up_after
            && since.elapsed() >= limit
        {
            return Err(e.context(format!(
                "the sync kept failing for {} s; giving up. Everything applied is recorded on the target (key cutover:position): run `cutover sync` again to continue from there",
                since.elapsed().as_secs()
            )));
        }
        metrics::counter!("cutover_sync_restarts_total").increment(1);
        let line = format!(
            "cutover sync: failed: {msg}; retrying in {} s (it resumes from the position stored on the target; Ctrl-C stops)",
            backoff.as_secs()
        );
        if headless {
            say(&line);
        } else {
            tracing::error!(error = %msg, retry_in_s = backoff.as_secs(), "sync failed; retrying (it resumes from the position stored on the target)");
        }
        progress.publish_metrics();
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if ctx.stop.load(Ordering::Acquire) {
                progress.retry_in_s.store(0, Ordering::Relaxed);
                if headless {
                    say(
                        "cutover sync: stopped while waiting to retry; the target keeps the position of everything applied",
                    );
                }
                return Ok(progress.carried_report());
            }
            let left = until.saturating_duration_since(Instant::now());
            progress
                .retry_in_s
                .store(left.as_secs() + 1, Ordering::Relaxed);
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        progress.retry_in_s.store(0, Ordering::Relaxed);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reply: &str) -> anyhow::Error {
        TargetError::Refused {
            addr: "t".into(),
            step: "GET".into(),
            reply: reply.into(),
        }
        .into()
    }

    #[test]
    fn classes() {
        let io = anyhow::Error::from(TargetError::Io {
            addr: "t".into(),
            source: std::io::ErrorKind::ConnectionReset.into(),
        })
        .context("while applying");
        assert_eq!(classify(&io), Class::Retry);
        assert_eq!(
            error_text(&io),
            "while applying: connection to the target t failed: connection reset"
        );
        let connect = anyhow::Error::from(TargetError::Connect {
            addr: "t".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(classify(&connect), Class::Connect);
        assert_eq!(
            classify(&refused("LOADING Redis is loading the dataset in memory")),
            Class::Retry
        );
        assert_eq!(
            classify(&refused("BUSY Redis is busy running a script")),
            Class::Retry
        );
        assert_eq!(
            classify(&refused("BUSYKEY Target key name already exists.")),
            Class::Permanent
        );
        assert_eq!(
            classify(&refused("WRONGPASS invalid username-password pair")),
            Class::Permanent
        );
        assert_eq!(
            classify(&refused(
                "OOM command not allowed when used memory > 'maxmemory'."
            )),
            Class::Retry
        );
        assert_eq!(
            classify(&refused("NOREPLICAS Not enough good replicas to write.")),
            Class::Retry
        );
        let unapplied = anyhow::Error::from(TargetError::Unapplied { what: "x".into() });
        assert_eq!(classify(&unapplied), Class::Stop);
        let hold = anyhow::Error::from(TargetError::CannotHold { what: "x".into() });
        assert_eq!(classify(&hold), Class::Permanent);
        assert_eq!(classify(&anyhow::anyhow!("switched")), Class::Permanent);
        let link = anyhow::Error::from(EngineError::SourceLink {
            message: "refused".into(),
            transient: true,
        });
        assert_eq!(classify(&link), Class::Connect);
    }
}
