//! Capture for the shadow (`cutover::shadow`): while the old side is kept in step, each
//! acknowledged write is kept as sent and queued in its deterministic form once its reply is
//! known; writes to one key are kept in order across sessions (`cutover::order`).

use super::*;

/// A write as the client sent it, kept until its reply tells what to shadow.
#[derive(Debug)]
pub(super) struct ShadowPlan {
    /// The command as the client sent it (one copy).
    pub(super) wire: Vec<u8>,
    pub(super) db: u32,
    /// Its shadow form depends on the reply (see `shadow::needs_reply`); otherwise it is sent
    /// to the old side as it is, unless it failed.
    pub(super) rewrite: bool,
    /// The keys it holds in the per-key order (given back when the plan is dropped, after
    /// its shadow was queued).
    pub(super) _guard: Option<KeyGuard>,
}

impl ShadowPlan {
    pub(super) fn args(&self) -> Vec<Vec<u8>> {
        crate::sync::engine::split_args(&self.wire)
            .map(|a| a.iter().map(|x| x.to_vec()).collect())
            .unwrap_or_default()
    }
}

impl Session {
    /// Keeps a write's arguments, when writes are being shadowed, to shadow it once its reply
    /// is known (inside `MULTI`: once `EXEC` answers).
    pub(super) fn capture_shadow(&mut self, cmd: usize, wire: &[u8]) {
        if self.shared.shadow.load().is_none() {
            return;
        }
        let plan = ShadowPlan {
            wire: wire.to_vec(),
            db: self.conn.db,
            rewrite: shadow::needs_reply(cmd),
            _guard: if self.conn.in_multi {
                None
            } else {
                self.next_guard.take()
            },
        };
        if self.conn.in_multi {
            self.txn_shadow.push(plan);
        } else {
            self.next_shadow = Some(Box::new(plan));
        }
    }

    /// A shadowed write was answered: queue its deterministic form for the old side.
    pub(super) fn emit_shadow(&self, plan: ShadowPlan, reply: &[u8]) {
        let Some(sink) = self.shared.shadow.load_full() else {
            return;
        };
        if !plan.rewrite {
            // The caller checked that the reply is not an error.
            sink.push(ShadowItem {
                db: plan.db,
                action: shadow::Action::Raw(plan.wire),
            });
            return;
        }
        let action = match Value::decode(reply, self.conn.resp) {
            Some(v) => shadow::shadow_form(&plan.args(), &v, crate::cutover::unix_ms()),
            // A script's reply is only compared; one too deep to decode is not.
            None if shadow::is_script(&plan.wire) => shadow::Action::Replay(plan.args(), None),
            None => {
                shadow::Action::Unsupported("a reply too big or unreadable to interpret".into())
            }
        };
        sink.push(ShadowItem {
            db: plan.db,
            action,
        });
    }

    /// `EXEC` answered: the queued writes are shadowed with their replies, as one transaction.
    pub(super) fn emit_txn_shadow(&mut self, reply: &[u8]) {
        let plans = std::mem::take(&mut self.txn_shadow);
        if plans.is_empty() {
            return;
        }
        let Some(sink) = self.shared.shadow.load_full() else {
            return;
        };
        let replies = match Value::decode(reply, self.conn.resp) {
            Some(Value::Array(replies)) => replies,
            // Aborted (a nil): nothing ran.
            Some(_) => return,
            None => {
                sink.mark_unsafe("a transaction's reply was too big to interpret");
                return;
            }
        };
        let now = crate::cutover::unix_ms();
        let db = plans[0].db;
        let mut batch = Vec::new();
        for (plan, v) in plans.iter().zip(&replies) {
            match shadow::shadow_form(&plan.args(), v, now) {
                shadow::Action::Apply(cmds) if plan.db == db => batch.extend(cmds),
                shadow::Action::Skip => {}
                other => {
                    if !batch.is_empty() {
                        sink.push(ShadowItem {
                            db,
                            action: shadow::Action::Apply(std::mem::take(&mut batch)),
                        });
                    }
                    sink.push(ShadowItem {
                        db: plan.db,
                        action: other,
                    });
                }
            }
        }
        if !batch.is_empty() {
            sink.push(ShadowItem {
                db,
                action: shadow::Action::Apply(batch),
            });
        }
        // The transaction's shadow is queued: its keys are free again.
        self.txn_guard = None;
    }

    /// While writes are shadowed: takes the keys of a write about to be sent (an `EXEC`:
    /// every key its transaction writes) in the per-key order; `true` when another write to
    /// one of them is in flight, and this one must wait ([`crate::cutover::order`]).
    /// Blocking calls take nothing (they would hold their key while they wait for a push).
    pub(super) fn waits_for_keys(&mut self, req: &Request) -> bool {
        self.next_guard = None;
        if self.streaming_request || !self.conn.authenticated || self.shared.shadow.load().is_none()
        {
            return false;
        }
        let order = Arc::clone(&self.shared.key_order);
        let keys = {
            let args: Vec<&[u8]> = match req {
                Request::Empty { .. } => return false,
                Request::Inline { args, .. } => args.iter().map(|a| &a[..]).collect(),
                Request::Array { len, .. } => {
                    match crate::sync::engine::split_args(&self.client_in[..*len]) {
                        Ok(a) => a,
                        Err(_) => return false,
                    }
                }
            };
            let Some(name) = args.first() else {
                return false;
            };
            if name.eq_ignore_ascii_case(b"EXEC") {
                if !self.conn.in_multi || self.txn_shadow.is_empty() {
                    return false;
                }
                let mut all = Vec::new();
                let mut every = false;
                for plan in &self.txn_shadow {
                    let plan_args = plan.args();
                    let refs: Vec<&[u8]> = plan_args.iter().map(|a| &a[..]).collect();
                    match order::write_keys(&order, plan.db, &refs) {
                        OrderKeys::All => every = true,
                        OrderKeys::Keys(k) => all.extend(k),
                    }
                }
                all.sort_unstable();
                all.dedup();
                let keys = if every {
                    OrderKeys::All
                } else {
                    OrderKeys::Keys(all)
                };
                return match order.try_acquire(keys, 0) {
                    Some(g) => {
                        self.txn_guard = Some(g);
                        false
                    }
                    None => true,
                };
            }
            let cmd = command::command_id(name);
            if self.conn.in_multi || !shadow::is_write(cmd) || command::may_block(cmd) {
                return false;
            }
            (
                order::write_keys(&order, self.conn.db, &args),
                order::commuting_class(&args),
            )
        };
        let (keys, class) = keys;
        match order.try_acquire(keys, class) {
            Some(g) => {
                self.next_guard = Some(g);
                false
            }
            None => true,
        }
    }
}
