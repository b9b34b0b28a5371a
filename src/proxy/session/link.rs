//! The link to the backend's shared connection (`proxy::mux`): the hot path that batches a
//! run of ordinary commands, the decision to move to an own connection (pinning), and the
//! replies coming back in order.

use super::*;

/// The last command name looked up on the hot path and whether it is an ordinary command
/// for the shared connection. Pipelines repeat one command, so all but the first skip the
/// table lookup.
#[derive(Default)]
pub(super) struct LastName {
    bytes: [u8; 16],
    len: usize,
    cmd: usize,
    plain: bool,
    /// `EVALSHA`/`EVALSHA_RO`: its SHA is noted (`note_evalsha`).
    calls_script: bool,
}

impl Session {
    /// The hot path: the run of complete ordinary commands at the front of `client_in` joins
    /// the shared connection's batch in one piece. One pass frames each command and looks at
    /// its name only ([`request::frame_whole`]); the bytes are copied once for the whole run.
    /// Stops at the first command that needs more thought (anything [`Session::dispatch`]
    /// treats specially, a write while writes are shadowed, an incomplete or huge command, the
    /// in-flight window) and leaves it to the general path. `false`: it took nothing.
    pub(super) fn take_plain_run(&mut self) -> bool {
        if self.pinned
            || self.streaming_request
            || self.held.is_some()
            || self.prefer_own_connection
            || !self.conn.authenticated
            || !self.req.at_start()
        {
            return false;
        }
        let shadowing = self.shared.shadow.load().is_some();
        let room = MUX_WINDOW.saturating_sub(self.mux_inflight + self.mux_batch_count as usize);
        let buf = &self.client_in[..];
        let mut at = 0;
        let mut taken = 0;
        let mut run: Option<(usize, u64)> = None;
        while taken < room {
            let Some((name, len)) = request::frame_whole(&buf[at..], request::DEFAULT_MAX_BULK)
            else {
                break;
            };
            let name = &buf[at + name.start..at + name.end];
            let last = &mut self.last_name;
            if name.len() > last.bytes.len() {
                break;
            }
            // Byte by byte: names are short, and a `memcmp` call costs more than the loop.
            if name.len() != last.len || name.iter().zip(&last.bytes).any(|(a, b)| a != b) {
                let cmd = command::command_id(name);
                last.bytes[..name.len()].copy_from_slice(name);
                last.len = name.len();
                last.cmd = cmd;
                last.plain = !command::has_own_kind(cmd)
                    && !command::needs_own_connection(cmd)
                    && !command::learns_script(cmd);
                last.calls_script = command::calls_script(cmd);
            }
            let (cmd, calls_script) = (last.cmd, last.calls_script);
            if !last.plain || (shadowing && shadow::is_write(cmd)) {
                break;
            }
            if calls_script {
                let wire = &buf[at..at + len];
                note_evalsha(&mut self.last_sha, &self.shared.scripts, wire);
                self.evalsha_sent = (self.pending.is_empty() && !self.conn.in_multi)
                    .then(|| Bytes::copy_from_slice(wire));
            }
            match &mut run {
                Some((c, n)) if *c == cmd => *n += 1,
                _ => {
                    if let Some((c, n)) = run.replace((cmd, 1)) {
                        telemetry::commands().received(c, n);
                    }
                }
            }
            self.mux_batch_count += 1;
            self.pending
                .push_back(Pending::via_mux(cmd, self.batch_started, None));
            at += len;
            taken += 1;
        }
        if let Some((c, n)) = run {
            telemetry::commands().received(c, n);
        }
        if taken == 0 {
            return false;
        }
        self.mux_batch.extend_from_slice(&buf[..at]);
        self.client_in.advance(at);
        self.next_shadow = None;
        self.classified = None;
        true
    }

    /// The common case without the async machinery of [`Session::dispatch`]: an ordinary
    /// command of a logged-in session without its own connection joins the batch for the
    /// shared connection. `false` leaves the command to `dispatch`.
    pub(super) fn mux_fast_path(&mut self, req: &Request) -> bool {
        let &Request::Array { len, .. } = req else {
            return false;
        };
        let Some((cmd, Kind::Plain)) = self.classified else {
            return false;
        };
        if self.pinned
            || self.streaming_request
            || !self.conn.authenticated
            || (shadow::is_write(cmd) && self.shared.shadow.load().is_some())
            || command::learns_script(cmd)
        {
            return false;
        }
        self.classified = None;
        telemetry::commands().received(cmd, 1);
        self.next_shadow = None;
        if command::calls_script(cmd) {
            note_evalsha(
                &mut self.last_sha,
                &self.shared.scripts,
                &self.client_in[..len],
            );
            let wire = Bytes::copy_from_slice(&self.client_in[..len]);
            self.keep_evalsha(&wire);
        }
        self.mux_batch.extend_from_slice(&self.client_in[..len]);
        self.client_in.advance(len);
        self.mux_pending(cmd);
        true
    }

    /// Would this command, on an unpinned session, have to run on its own connection?
    pub(super) fn needs_own_connection(&mut self, req: &Request) -> bool {
        let (name, arg1, arg2, argc) = match req {
            Request::Empty { .. } => return false,
            Request::Inline { args, .. } => (
                args.first().map(|a| &a[..]),
                args.get(1).map(|a| &a[..]),
                args.get(2).map(|a| &a[..]),
                args.len() as u64,
            ),
            Request::Array { argc, args, .. } => (
                args.get(&self.client_in, 0),
                args.get(&self.client_in, 1),
                args.get(&self.client_in, 2),
                *argc,
            ),
        };
        let Some(name) = name else { return false };
        let cmd = command::command_id(name);
        let kind = if command::has_own_kind(cmd) {
            command::classify(name, arg1, arg2, argc)
        } else {
            Kind::Plain
        };
        // Classified once per command: `command` takes it from here.
        self.classified = Some((cmd, kind.clone()));
        if !self.conn.authenticated {
            // Everything else is answered by the proxy itself until the client logs in;
            // `HELLO … AUTH` logs in and then changes the connection's protocol.
            return kind == Kind::Hello;
        }
        if self.prefer_own_connection {
            return true;
        }
        let proxy_auth = self.shared.settings.auth.password.is_some();
        match kind {
            Kind::Plain => command::needs_own_connection(cmd),
            Kind::Quit | Kind::Refused(_) | Kind::Exec | Kind::Discard | Kind::Unwatch => false,
            Kind::Auth => !proxy_auth,
            // Masked replies are rewritten one by one: only on the session's own connection.
            Kind::ConfigGet => proxy_auth,
            _ => true,
        }
    }

    /// Moves the session to its own backend connection once nothing is in flight on the
    /// shared one; `false` while it must wait.
    pub(super) fn pin(&mut self) -> bool {
        self.flush_mux_batch();
        if !self.pending.is_empty() {
            return false;
        }
        self.pinned = true;
        true
    }

    /// Adds a command to the batch for the backend's shared connection.
    pub(super) fn mux_push(&mut self, cmd: usize, wire: &[u8]) {
        self.mux_batch.extend_from_slice(wire);
        self.mux_pending(cmd);
    }

    /// Records a command just added to the shared connection's batch.
    pub(super) fn mux_pending(&mut self, cmd: usize) {
        self.mux_batch_count += 1;
        let shadow = self.next_shadow.take();
        self.pending
            .push_back(Pending::via_mux(cmd, self.batch_started, shadow));
    }

    /// Sends the collected batch to the shared connection of the route's primary.
    pub(super) fn flush_mux_batch(&mut self) {
        if self.mux_batch_count == 0 {
            return;
        }
        let count = std::mem::take(&mut self.mux_batch_count);
        self.mux_inflight += count as usize;
        let wire = self.mux_batch.split().freeze();
        let reply_to = match &self.mux_tx {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = unbounded_channel();
                self.mux_rx = Some(rx);
                self.mux_tx = Some(tx.clone());
                tx
            }
        };
        // The primary of the epoch read at the gate for this batch (`dest.rs`); the route
        // cannot have moved since (this session is busy).
        debug_assert_eq!(
            self.shared.route.load().epoch,
            self.epoch,
            "a batch for the shared connection outlived its route epoch"
        );
        let settings = &self.shared.settings;
        let mux = self.shared.links.get(
            &self.primary,
            settings.connect_timeout,
            settings.buffer_limit,
        );
        if mux
            .send(MuxRequest {
                wire,
                count,
                reply_to,
            })
            .is_err()
        {
            self.on_mux_reply(MuxReply::Failed {
                message: "ERR cutover: the shared backend connection stopped".into(),
                count,
            });
        }
    }

    /// Replies (or a failure) from the shared connection for this session's oldest commands.
    pub(super) fn on_mux_reply(&mut self, reply: MuxReply) {
        let (completed, failure) = match reply {
            MuxReply::Data { bytes, completed } => {
                if completed == 1
                    && self.evalsha_sent.is_some()
                    && let Some(wire) = self.evalsha_retry(&bytes)
                {
                    // The same pending entry waits for the EVAL's reply instead.
                    self.mux_inflight = self.mux_inflight.saturating_sub(1);
                    self.mux_batch.extend_from_slice(&wire);
                    self.mux_batch_count += 1;
                    self.flush_mux_batch();
                    return;
                }
                if bytes.len() >= BIG_REPLY {
                    self.prefer_own_connection = true;
                }
                if self.mux_framing {
                    self.frame_mux_replies(&bytes, completed);
                }
                // Nothing queued before these bytes: hand them to the socket directly and keep
                // only what it did not take (saves a copy per reply batch).
                let mut rest = &bytes[..];
                if self.client_out.is_empty()
                    && let Ok(n) = self.client.write_now(rest)
                {
                    telemetry::hot().bytes_out.increment(n as u64);
                    rest = &rest[n..];
                }
                self.client_out.extend_from_slice(rest);
                (completed, None)
            }
            MuxReply::Failed { message, count } => (count, Some(message)),
        };
        self.mux_inflight = self.mux_inflight.saturating_sub(completed as usize);
        let now = Instant::now();
        // Timed in runs of the same command sent at the same time (a pipeline of GETs is one
        // record).
        let mut run: Option<(usize, Instant, u64)> = None;
        for _ in 0..completed {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            debug_assert!(p.via_mux);
            match &mut run {
                Some((cmd, started, n)) if *cmd == p.cmd && *started == p.started => *n += 1,
                _ => {
                    if let Some((cmd, started, n)) = run.replace((p.cmd, p.started, 1)) {
                        telemetry::commands().answered(cmd, n, now - started);
                    }
                }
            }
            if let Some(msg) = &failure {
                push_error(&mut self.client_out, msg);
            }
        }
        if let Some((cmd, started, n)) = run {
            telemetry::commands().answered(cmd, n, now - started);
        }
        self.drain_local();
    }

    /// Splits replies from the shared connection one by one and shadows the writes among the
    /// `completed` commands now answered (they are the oldest `completed` pending entries).
    pub(super) fn frame_mux_replies(&mut self, bytes: &[u8], completed: u32) {
        self.mux_frames.extend_from_slice(bytes);
        for i in 0..completed as usize {
            let info = match self.mux_frame_parser.parse(&self.mux_frames) {
                Ok(Some(info)) => info,
                _ => {
                    // Cannot happen (the shared connection only reports whole replies); never
                    // guess which reply is whose.
                    self.mux_frames.clear();
                    self.mux_frame_parser = ReplyParser::default();
                    if let Some(sink) = self.shared.shadow.load_full() {
                        sink.mark_unsafe("a reply on the shared connection could not be framed");
                    }
                    return;
                }
            };
            let reply = self.mux_frames.split_to(info.len);
            if info.is_error() {
                continue;
            }
            if let Some(plan) = self.pending.get_mut(i).and_then(|p| p.shadow.take()) {
                self.emit_shadow(*plan, &reply);
            }
        }
        if self.mux_frames.is_empty() && self.mux_frames.capacity() > TRIM_CAPACITY {
            self.mux_frames = BytesMut::new();
        }
    }
}
