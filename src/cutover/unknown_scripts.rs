//! Scripts the clients call by SHA that the proxy never saw loaded.
//!
//! A script loaded directly on the source (a deploy script, an application connected to it
//! before the proxy existed) is in the source's script cache but not in the proxy's registry
//! ([`super::scripts`]), so no move copies it: after the switch its `EVALSHA` fails with
//! `NOSCRIPT`. No command lists a server's script cache, but the proxy sees every `EVALSHA`:
//! one whose SHA the registry does not know is noted here ([`CalledUnknown::note`], a
//! *candidate*; a session compares with the last SHA it noted first, so a client calling the
//! same script in a loop costs one 40-byte comparison per call), and the candidates are
//! asked of the server the calls went to with `SCRIPT EXISTS` — the same answer as the
//! call's own reply being anything but `NOSCRIPT`, without pairing replies with commands on
//! the shared connection: every 500 ms by [`watch`] (the current primary), and by each move
//! before its pause (the old primary). A script the server has is **confirmed**: listed in
//! status (`scripts.unknown_called`, bounded to [`LISTED`] SHAs, the rest counted), logged
//! as a WARN once, and named in a WARN by every move (the move goes on: the client may load
//! it again after a `NOSCRIPT`). A candidate the server does not have is dropped (its client
//! got `NOSCRIPT` and will `EVAL` or `SCRIPT LOAD` it, which the registry learns).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use super::scripts::{Scripts, Sha};
use crate::client::{Client, Value};

/// How many SHAs are kept (candidates and confirmed together); beyond, they are counted.
pub const LISTED: usize = 100;

#[derive(Default)]
struct Called {
    /// Called, not known to the registry, not asked about yet.
    candidates: Vec<Sha>,
    /// Called, not known to the registry, and the server had them.
    confirmed: Vec<Sha>,
    /// SHAs not kept because the lists were full.
    more: u64,
}

/// The `EVALSHA`s of scripts the registry does not know (see the module doc).
#[derive(Default)]
pub struct CalledUnknown {
    inner: Mutex<Called>,
}

impl CalledUnknown {
    /// An `EVALSHA`/`EVALSHA_RO` of `sha` went to the primary; `known`: the registry has
    /// its body. Cheap when the SHA is known or already kept.
    pub fn note(&self, sha: &[u8], known: impl FnOnce(&[u8]) -> bool) {
        let Ok(sha) = <Sha>::try_from(sha.to_ascii_lowercase().as_slice()) else {
            return;
        };
        if known(&sha) {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        if g.candidates.contains(&sha) || g.confirmed.contains(&sha) {
            return;
        }
        if g.candidates.len() + g.confirmed.len() >= LISTED {
            g.more += 1;
            return;
        }
        g.candidates.push(sha);
    }

    fn candidates(&self) -> Vec<Sha> {
        self.inner
            .lock()
            .map(|g| g.candidates.clone())
            .unwrap_or_default()
    }

    /// The server's `SCRIPT EXISTS` answers for `asked`: what it has (and the registry
    /// still does not know) is confirmed, the rest dropped. The newly confirmed are returned.
    fn resolve(&self, asked: &[Sha], exists: &[bool], known: impl Fn(&[u8]) -> bool) -> Vec<Sha> {
        let Ok(mut g) = self.inner.lock() else {
            return Vec::new();
        };
        let mut new = Vec::new();
        for (sha, has) in asked.iter().zip(exists) {
            g.candidates.retain(|c| c != sha);
            if *has && !known(sha) && !g.confirmed.contains(sha) {
                g.confirmed.push(*sha);
                new.push(*sha);
            }
        }
        new
    }

    /// The confirmed SHAs the registry still does not know (a client may have loaded one
    /// through the proxy since), and how many more were not kept.
    pub fn confirmed(&self, known: impl Fn(&[u8]) -> bool) -> (Vec<String>, u64) {
        let Ok(mut g) = self.inner.lock() else {
            return (Vec::new(), 0);
        };
        g.confirmed.retain(|s| !known(s));
        let list = g
            .confirmed
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        (list, g.more)
    }
}

/// Asks the server behind `c` about the candidates (`SCRIPT EXISTS`); logs the newly
/// confirmed ones. `Err`: the connection failed (the candidates stay).
pub async fn resolve(registry: &Scripts, c: &mut Client) -> Result<(), String> {
    let asked = registry.called.candidates();
    if asked.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&[u8]> = vec![b"SCRIPT", b"EXISTS"];
    args.extend(asked.iter().map(|s| &s[..]));
    let exists: Vec<bool> = match c.query(&args).await? {
        Value::Array(items) if items.len() == asked.len() => {
            items.iter().map(|v| matches!(v, Value::Int(1))).collect()
        }
        other => return Err(format!("SCRIPT EXISTS answered {other:?}")),
    };
    let new = registry
        .called
        .resolve(&asked, &exists, |s| registry.knows(s));
    if !new.is_empty() {
        let shas: Vec<String> = new
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        tracing::warn!(
            ?shas,
            "clients call scripts by SHA (EVALSHA) that were not loaded through the proxy (loaded directly on the server): a move cannot copy them, so their EVALSHA fails with NOSCRIPT on the new primary until the client loads them again; load them through the proxy (SCRIPT LOAD) before the switch"
        );
    }
    Ok(())
}

/// Every 500 ms, asks the current primary about the candidates (see the module doc). Runs
/// for the life of the process.
pub async fn watch(proxy: Arc<dyn super::ProxyHandle>) {
    let timeout = Duration::from_secs(2);
    let mut conn: Option<(Arc<crate::route::Backend>, Client)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let scripts = proxy.scripts();
        if scripts.called.candidates().is_empty() {
            continue;
        }
        let primary = Arc::clone(proxy.route().load().primary_backend());
        if conn.as_ref().is_none_or(|(b, _)| !Arc::ptr_eq(b, &primary)) {
            conn = match tokio::time::timeout(timeout, super::control::connect(&primary, timeout))
                .await
            {
                Ok(Ok(mut c)) => {
                    // Named as cutover's own (the switch's check for clients writing to the
                    // source directly skips it: `SCRIPT` counts as a write there).
                    let name = crate::sync::target::CLIENT_NAME.as_bytes();
                    let _ = tokio::time::timeout(timeout, c.query(&[b"CLIENT", b"SETNAME", name]))
                        .await;
                    Some((primary, c))
                }
                _ => None,
            };
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        match tokio::time::timeout(timeout, resolve(scripts, c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot ask the primary about the scripts called by SHA");
                conn = None;
            }
            Err(_) => conn = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: u8) -> Sha {
        [c; 40]
    }

    #[test]
    fn unknown_calls_are_kept_bounded_and_confirmed_by_the_server() {
        let called = CalledUnknown::default();
        let known = |s: &[u8]| s == sha(b'a');
        called.note(&sha(b'a'), known);
        called.note(&sha(b'b'), known);
        called.note(&sha(b'B'), known); // the same SHA, upper case
        called.note(&sha(b'c'), known);
        called.note(b"short", known);
        assert_eq!(called.candidates(), vec![sha(b'b'), sha(b'c')]);
        let new = called.resolve(&[sha(b'b'), sha(b'c')], &[true, false], known);
        assert_eq!(new, vec![sha(b'b')]);
        assert!(called.candidates().is_empty());
        let (list, more) = called.confirmed(known);
        assert_eq!(list, vec![String::from_utf8(sha(b'b').to_vec()).unwrap()]);
        assert_eq!(more, 0);
        // Learned through the proxy since: no longer listed.
        let (list, _) = called.confirmed(|s: &[u8]| s == sha(b'b'));
        assert!(list.is_empty());
        // Bounded.
        for i in 0..LISTED + 5 {
            let mut s = [b'0'; 40];
            s[..8].copy_from_slice(format!("{i:08}").as_bytes());
            called.note(&s, |_| false);
        }
        assert_eq!(called.candidates().len(), LISTED);
        assert_eq!(called.confirmed(|_| false).1, 5);
    }
}
