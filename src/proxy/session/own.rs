//! The session's own backend connection (`Upstream`): opening it, re-creating the client's
//! connection state on it, writing to it, framing its replies and applying their effects, and
//! failing what was in flight when it breaks.

use super::*;

impl Session {
    /// Queues an internal command whose reply is not the client's.
    pub(super) fn send_internal(&mut self, args: &[&[u8]], replies: u32) {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        let Some(out) = self.backend_out() else {
            return;
        };
        out.extend_from_slice(&wire);
        if replies == 0 {
            return;
        }
        self.pending.push_back(Pending {
            cmd: command::command_id(args[0]),
            started: self.batch_started,
            expect: Expect::Replies(replies),
            effect: Effect::None,
            swallow: true,
            via_mux: false,
            reissue: None,
            nil_reply: false,
            mask_secrets: false,
            shadow: None,
        });
    }

    /// Makes sure the session's own connection is one to the primary of the epoch read at
    /// the gate (`dest.rs`), re-creating the session's state on a new one. A connection of an
    /// older epoch is left here: [`Session::dest`] let the command through only once that
    /// connection owed nothing more.
    pub(super) async fn ensure_upstream(&mut self) -> Result<(), String> {
        if let Some(up) = &self.up {
            if up.epoch == self.epoch {
                return Ok(());
            }
            let idle = self.pending.is_empty() && !self.conn.in_multi && !self.streaming_request;
            debug_assert!(idle, "moving a session that still waits on the old primary");
            if !idle {
                // Unreachable by construction; never leave a client waiting for replies that
                // can no longer come.
                self.upstream_lost("the primary moved while commands were in flight");
            }
            tracing::debug!(peer = %self.peer, "route moved: the session's connection follows the new primary");
            self.drop_upstream();
            self.leave_old_connection()?;
        }
        let backend = Arc::clone(&self.primary);
        let epoch = self.epoch;
        let stream = upstream::open(&backend, self.shared.settings.connect_timeout)
            .await
            .map_err(|e| {
                telemetry::error("backend_unreachable");
                e.to_string()
            })?;
        let guard = ConnGuard::new(backend.clone(), stream.local_addr().ok());
        let url_db = backend.url.db;
        self.up = Some(Upstream {
            stream,
            epoch,
            _guard: guard,
            backend,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            reply: ReplyParser::default(),
        });
        self.restore_state(url_db);
        Ok(())
    }

    /// Re-creates the client's connection state on a fresh backend connection.
    pub(super) fn restore_state(&mut self, url_db: u32) {
        let conn = self.conn.clone();
        if conn.resp != 2 {
            self.send_internal(&[b"HELLO", conn.resp.to_string().as_bytes()], 1);
        }
        if conn.db != url_db {
            self.send_internal(&[b"SELECT", conn.db.to_string().as_bytes()], 1);
        }
        if let Some(name) = &conn.name {
            self.send_internal(&[b"CLIENT", b"SETNAME", name], 1);
        }
        // Not every server has these (NO-EVICT is 7.0+, NO-TOUCH and SETINFO 7.2+): a new
        // primary that lacks one answers "unknown subcommand", which `on_reply` logs at debug
        // level and skips; the move goes on.
        if conn.no_evict {
            self.send_internal(&[b"CLIENT", b"NO-EVICT", b"on"], 1);
        }
        if conn.no_touch {
            self.send_internal(&[b"CLIENT", b"NO-TOUCH", b"on"], 1);
        }
        if let Some(v) = &conn.lib_name {
            self.send_internal(&[b"CLIENT", b"SETINFO", b"LIB-NAME", v], 1);
        }
        if let Some(v) = &conn.lib_ver {
            self.send_internal(&[b"CLIENT", b"SETINFO", b"LIB-VER", v], 1);
        }
        for kind in SubKind::ALL {
            let set = &conn.subs[kind.index()];
            if !set.is_empty() {
                let mut args: Vec<&[u8]> = vec![kind.subscribe_word().as_bytes()];
                args.extend(set.iter().map(|c| &c[..]));
                self.send_internal(&args, set.len() as u32);
            }
        }
        if conn.reply_off {
            // (Last: the restore commands above are answered, and this one is not.)
            self.send_internal(&[b"CLIENT", b"REPLY", b"OFF"], 0);
        }
    }

    /// After `RESET` the backend connection is logged out: log in and select again.
    pub(super) fn restore_backend_login(&mut self) {
        let Some(up) = &self.up else { return };
        let url = up.backend.url.clone();
        if let Some(auth) = url.auth_command() {
            self.send_internal(&auth, 1);
        }
        if url.db != 0 {
            self.send_internal(&[b"SELECT", url.db.to_string().as_bytes()], 1);
        }
    }

    pub(super) fn drop_upstream(&mut self) {
        self.up = None;
    }

    pub(super) fn flush_upstream(&mut self) {
        let Some(up) = &mut self.up else { return };
        while !up.out.is_empty() {
            match up.stream.write_now(&up.out) {
                Ok(n) => up.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.upstream_lost(&e.to_string()),
            }
        }
        if up.stream.wants_flush()
            && let Err(e) = up.stream.flush_now()
        {
            self.upstream_lost(&e.to_string());
        }
    }

    pub(super) fn read_upstream(&mut self) {
        let Some(up) = &mut self.up else { return };
        match up.stream.read_now(&mut up.inbuf, READ_CHUNK) {
            Ok(Some(0)) => return self.upstream_lost("connection closed by the server"),
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => return self.upstream_lost(&e.to_string()),
        }
        loop {
            let Some(up) = &mut self.up else { return };
            if up.inbuf.is_empty() {
                return;
            }
            if self.conn.monitoring {
                // The monitor feed (and any reply) goes to the client as it comes.
                self.client_out.extend_from_slice(&up.inbuf);
                up.inbuf.clear();
                return;
            }
            up.reply.capture_arrays =
                self.conn.subscribed() || self.pending.front().is_some_and(|p| p.cmd_is_pubsub());
            match up.reply.parse(&up.inbuf) {
                Ok(Some(info)) => {
                    let bytes = up.inbuf.split_to(info.len);
                    self.on_reply(info, &bytes);
                }
                Ok(None) => {
                    let scanned = up.reply.scanned();
                    // A reply to be masked is held whole (a CONFIG GET reply is small).
                    let masked = self.pending.front().is_some_and(|p| p.mask_secrets);
                    if scanned >= STREAM_THRESHOLD && !masked {
                        let part = up.inbuf.split_to(scanned);
                        up.reply.forwarded(scanned);
                        if !self.pending.front().is_some_and(|p| p.swallow) {
                            self.client_out.extend_from_slice(&part);
                        }
                    }
                    return;
                }
                Err(e) => {
                    telemetry::error("backend_protocol");
                    return self.upstream_lost(&e.to_string());
                }
            }
        }
    }

    /// One complete reply from the backend.
    pub(super) fn on_reply(&mut self, info: ReplyInfo, bytes: &[u8]) {
        let confirmation = self.sub_confirmation(&info);
        let out_of_band = confirmation.is_none()
            && (info.is_push()
                || (self.conn.resp == 2
                    && info.kind == b'*'
                    && self.conn.subscribed()
                    && (info.head_is(0, "message")
                        || info.head_is(0, "pmessage")
                        || info.head_is(0, "smessage"))));
        if out_of_band {
            self.client_out.extend_from_slice(bytes);
            return;
        }
        if let Some(Pending {
            expect: Expect::AllSubs(kind),
            ..
        }) = self.pending.front()
        {
            // Counted now that every earlier command was answered: one per subscription.
            let n = self.conn.subs[kind.index()].len().max(1) as u32;
            if let Some(head) = self.pending.front_mut() {
                head.expect = Expect::Replies(n);
            }
        }
        if let Some((kind, subscribe)) = confirmation {
            let channel = Bytes::copy_from_slice(info.head.get(1).map_or(&[][..], |c| &c[..]));
            let set = &mut self.conn.subs[kind.index()];
            if subscribe {
                set.insert(channel);
            } else {
                set.remove(&channel);
            }
        }
        if self.cancelled_by_flip(bytes) {
            return;
        }
        if info.is_error()
            && self.evalsha_sent.is_some()
            && let Some(wire) = self.evalsha_retry(bytes)
            && let Some(out) = self.backend_out()
        {
            // The same pending entry waits for the EVAL's reply instead.
            out.extend_from_slice(&wire);
            return;
        }
        let Some(head) = self.pending.front_mut() else {
            tracing::warn!(peer = %self.peer, "reply from the server without a command; passing it on");
            self.client_out.extend_from_slice(bytes);
            return;
        };
        if head.nil_reply {
            self.client_out.extend_from_slice(if self.conn.resp == 3 {
                b"_\r\n"
            } else {
                b"*-1\r\n"
            });
        } else if head.mask_secrets && !head.swallow {
            match crate::resp::mask::mask_values_after(bytes, crate::resp::mask::SECRET_CONFIGS) {
                Some(masked) => self.client_out.extend_from_slice(&masked),
                None => push_error(
                    &mut self.client_out,
                    "ERR cutover: a reply that may hold the backend's passwords could not be checked, so it is withheld",
                ),
            }
        } else if !head.swallow {
            self.client_out.extend_from_slice(bytes);
        }
        let done = match &mut head.expect {
            Expect::Replies(n) if *n > 1 && !info.is_error() => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if done {
            let mut head = self.pending.pop_front().expect("front exists");
            telemetry::commands().answered(head.cmd, 1, head.started.elapsed());
            if !info.is_error() && !head.swallow {
                if let Some(plan) = head.shadow.take() {
                    self.emit_shadow(*plan, bytes);
                }
                if matches!(head.effect, Effect::Exec) {
                    self.emit_txn_shadow(bytes);
                }
            }
            if matches!(head.effect, Effect::Exec | Effect::Discard) {
                self.txn_shadow.clear();
                self.txn_guard = None;
            }
            if info.is_error() {
                if !head.swallow {
                    telemetry::error("reply_error");
                } else if is_unknown_subcommand(bytes) {
                    // A setting the new server does not have (`CLIENT NO-TOUCH` on 7.0…).
                    tracing::debug!(peer = %self.peer, "the server lacks a setting the connection had; skipped: {}", String::from_utf8_lossy(bytes).trim_end());
                } else {
                    tracing::warn!(peer = %self.peer, "restoring connection state failed: {}", String::from_utf8_lossy(bytes).trim_end());
                }
            } else {
                self.apply(head.effect, &info);
            }
            self.drain_local();
        }
    }

    /// Is this reply a `(p|s)(un)subscribe` confirmation answering the command at the head?
    pub(super) fn sub_confirmation(&self, info: &ReplyInfo) -> Option<(SubKind, bool)> {
        if !(info.is_push() || info.kind == b'*') || info.head.len() < 3 {
            return None;
        }
        let head = self.pending.front()?;
        if !head.cmd_is_pubsub() {
            return None;
        }
        SubKind::ALL.into_iter().find_map(|k| {
            if info.head_is(0, k.subscribe_word()) {
                Some((k, true))
            } else if info.head_is(0, k.unsubscribe_word()) {
                Some((k, false))
            } else {
                None
            }
        })
    }

    pub(super) fn apply(&mut self, effect: Effect, info: &ReplyInfo) {
        match effect {
            Effect::None => {}
            Effect::Select(db) => self.conn.db = db,
            Effect::SetName(name) => {
                self.info.set_name(name.as_deref().map(|n| &n[..]));
                self.conn.name = name.map(|n| *n);
            }
            Effect::Hello(v, login) => {
                self.conn.resp = v;
                if let Some(user) = login {
                    self.conn.own_login = Some(*user);
                }
            }
            Effect::Login(user) => self.conn.own_login = Some(*user),
            Effect::Multi => {}
            Effect::Exec => {
                self.conn.watching = false;
                let queued = std::mem::take(&mut self.conn.multi_effects);
                if info.kind != b'_' && info.elements >= 0 {
                    for e in queued {
                        self.apply(e, info);
                    }
                }
            }
            Effect::Discard => {
                self.conn.watching = false;
                self.conn.multi_effects.clear();
            }
            Effect::Watch => self.conn.watching = true,
            Effect::Monitor => {
                self.conn.monitoring = true;
                // From now on the server's bytes pass through as they come, unpaired: the
                // commands pipelined behind MONITOR are answered in that stream, so they are
                // no longer waited for (a session would otherwise wait for them forever). The
                // proxy's own replies among them are written now.
                for p in std::mem::take(&mut self.pending) {
                    if let Expect::Local { reply, close } = p.expect {
                        self.client_out.extend_from_slice(&reply);
                        if close {
                            self.close_after_flush = true;
                            break;
                        }
                    }
                }
            }
            Effect::Unwatch => self.conn.watching = false,
            Effect::Reset => {
                let db = self.up.as_ref().map_or(0, |u| u.backend.url.db);
                let authenticated = self.shared.settings.auth.password.is_none();
                // `RESET` keeps the client library's name and version (Redis does).
                let lib_name = self.conn.lib_name.take();
                let lib_ver = self.conn.lib_ver.take();
                self.conn = ConnState::fresh(db, authenticated);
                self.conn.lib_name = lib_name;
                self.conn.lib_ver = lib_ver;
                self.info.set_name(None);
            }
            Effect::Client(opt) => match opt {
                ClientOpt::NoEvict(on) => self.conn.no_evict = on,
                ClientOpt::NoTouch(on) => self.conn.no_touch = on,
                ClientOpt::LibName(v) => self.conn.lib_name = v.map(|v| *v),
                ClientOpt::LibVer(v) => self.conn.lib_ver = v.map(|v| *v),
            },
        }
    }

    /// Emits the proxy's own replies that are now at the head of the queue.
    pub(super) fn drain_local(&mut self) {
        while let Some(Pending {
            expect: Expect::Local { .. },
            ..
        }) = self.pending.front()
        {
            let Some(Pending {
                expect: Expect::Local { reply, close },
                cmd,
                started,
                ..
            }) = self.pending.pop_front()
            else {
                unreachable!()
            };
            telemetry::commands().answered(cmd, 1, started.elapsed());
            self.client_out.extend_from_slice(&reply);
            if close {
                self.close_after_flush = true;
                self.pending.clear();
                return;
            }
        }
    }

    /// The backend connection broke: every command still waiting for a reply gets an error
    /// (it may or may not have run), in order with the proxy's own replies; the next command
    /// reconnects (with back-off) and the session state is re-created there.
    pub(super) fn upstream_lost(&mut self, why: &str) {
        let Some(up) = &self.up else { return };
        let name = up.backend.describe();
        tracing::warn!(peer = %self.peer, backend = %name, reason = why, in_flight = self.pending.len(), "backend connection lost");
        let login_lost = self.login_differs(&up.backend);
        telemetry::error("backend_lost");
        metrics::counter!("cutover_backend_lost_total", "side" => up.backend.side.as_str())
            .increment(1);
        self.drop_upstream();
        let msg = format!(
            "ERR cutover: lost the connection to {name} ({why}) before the reply; the command may or may not have been applied"
        );
        // State the proxy cannot re-create on a new connection: subscriptions (messages in the
        // gap would be lost), WATCH (a change in the gap would go unnoticed), a transaction
        // being queued (later commands would run outside it), client-side caching.
        let unrestorable = self.conn.subscribed()
            || self.conn.monitoring
            || self.conn.watching
            || self.conn.in_multi
            || self.conn.tracking
            || login_lost;
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            match p.expect {
                Expect::Local { reply, close } => {
                    self.client_out.extend_from_slice(&reply);
                    if close {
                        self.close_after_flush = true;
                        break;
                    }
                }
                Expect::Replies(_) | Expect::AllSubs(_) if !p.swallow => {
                    push_error(&mut self.client_out, &msg);
                }
                _ => {}
            }
        }
        self.conn.in_multi = false;
        self.conn.watching = false;
        self.conn.multi_effects.clear();
        self.txn_masks = false;
        if self.streaming_request {
            self.discard_request = true;
        }
        if unrestorable {
            // Close once the errors are written: the client sees a dropped connection, as it
            // would directly, and starts over knowingly.
            self.stop_reading = true;
            self.close_after_flush = true;
        }
    }
}

/// An error reply saying the server does not know a subcommand (`CLIENT NO-TOUCH` on Redis
/// 7.0: "unknown subcommand"; 6.2: "Unknown subcommand or wrong number of arguments").
fn is_unknown_subcommand(reply: &[u8]) -> bool {
    reply.starts_with(b"-ERR ")
        && reply
            .windows(b"unknown subcommand".len())
            .any(|w| w.eq_ignore_ascii_case(b"unknown subcommand"))
}
