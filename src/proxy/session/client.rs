//! Client I/O: reading the client's bytes, framing its requests and handing each to the
//! shared-connection link or the command handler; writing its replies; giving buffer memory
//! back while idle.

use super::*;

impl Session {
    pub(super) fn read_client(&mut self) -> io::Result<()> {
        match self.client.read_now(&mut self.client_in, READ_CHUNK)? {
            Some(0) => {
                // The client closed its side: run what it sent and answer it, then close; but
                // never wait for a call that may block forever (Redis drops such a client).
                self.client_eof = true;
                if self.pending.iter().any(|p| command::may_block(p.cmd)) {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if self.streaming_request {
                    // The client left in the middle of a command whose head was already
                    // forwarded: it can never be completed. Like Redis, free the client now
                    // (and with it the backend connection holding the partial command).
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed in the middle of a command",
                    ));
                }
            }
            Some(n) => telemetry::hot().bytes_in.increment(n as u64),
            None => {}
        }
        Ok(())
    }

    pub(super) fn flush_client(&mut self) -> io::Result<()> {
        while !self.client_out.is_empty() {
            match self.client.write_now(&self.client_out) {
                Ok(n) => {
                    telemetry::hot().bytes_out.increment(n as u64);
                    self.client_out.advance(n);
                    if self.info_busy && n > 0 {
                        // The client reads: it does not hold a move for that.
                        let at = self.shared.clients.ms(Instant::now());
                        self.info.progressed(at);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.client.wants_flush() {
            // TLS records left from a write or queued by a read (see `proxy::io`).
            self.client.flush_now()?;
        }
        Ok(())
    }

    /// Gives back buffer memory: a buffer emptier than [`TRIM_CAPACITY`] with more capacity
    /// always; and, while more than [`IDLE_TRIM_CLIENTS`] clients are connected, every empty
    /// buffer of an idle session (nothing waiting for a reply, nothing buffered), so thousands
    /// of idle connections do not each keep a 16 KiB read reservation. The price is one
    /// allocation per read for such a client at pipeline depth 1.
    pub(super) fn trim(&mut self) {
        // (Only while many clients are connected: a busy proxy with a few hundred clients
        // keeps its read buffers rather than allocating one per request.)
        let idle = self.pending.is_empty()
            && self.held.is_none()
            && self.mux_batch.is_empty()
            && self
                .shared
                .client_conns
                .load(std::sync::atomic::Ordering::Relaxed)
                > IDLE_TRIM_CLIENTS;
        let keep = |buf: &BytesMut| {
            !buf.is_empty() || buf.capacity() == 0 || (!idle && buf.capacity() <= TRIM_CAPACITY)
        };
        for buf in [
            &mut self.client_in,
            &mut self.client_out,
            &mut self.mux_batch,
        ] {
            if !keep(buf) {
                *buf = BytesMut::new();
            }
        }
        if let Some(up) = &mut self.up {
            for buf in [&mut up.inbuf, &mut up.out] {
                if !keep(buf) {
                    *buf = BytesMut::new();
                }
            }
        }
        if idle && self.pending.capacity() > 64 {
            self.pending = VecDeque::new();
        }
    }

    /// Frames and dispatches every complete command in `client_in`.
    pub(super) async fn process_requests(&mut self) {
        if self.client_in.is_empty() && self.held.is_none() && self.reissue.is_none() {
            return;
        }
        // The cutover barrier: mark this session busy, then look whether new commands are
        // being held (see `cutover::gate`); a transaction in progress goes on to its EXEC.
        let gate = &self.shared.gate;
        if !gate.enter(&mut self.busy, self.conn.in_multi || self.streaming_request) {
            let in_flight = self.in_flight_for_gate();
            gate.set_busy(&mut self.busy, in_flight);
            gate.set_held(&mut self.gated, true);
            return;
        }
        gate.set_held(&mut self.gated, false);
        // Busy from here on: the route read now stays the route for this whole batch.
        self.read_route();
        self.batch_started = Instant::now();
        if let Some((cmd, wire)) = self.reissue.take() {
            // A blocking call the move cancelled on the old side, to the new primary (under
            // the gate like every command, so a second move cannot slip in between).
            // Shadowed like any write once it pops something on the new primary.
            self.next_shadow = None;
            self.capture_shadow(cmd, &wire);
            self.send(cmd, &wire, Expect::Replies(1), Effect::None)
                .await;
        }
        if self.conn.monitoring {
            // A monitoring client's commands (QUIT, RESET) go to the server unparsed.
            if self.up.as_ref().is_some_and(|u| u.epoch != self.epoch) {
                let _ = self.leave_old_connection();
            } else {
                let buf = std::mem::take(&mut self.client_in);
                if let Some(out) = self.backend_out() {
                    out.extend_from_slice(&buf);
                }
                self.client_in = buf;
            }
            self.client_in.clear();
            return;
        }
        if self.client_in.is_empty() && self.held.is_none() {
            return;
        }
        if !self.mux_framing && self.mux_inflight == 0 && self.shared.shadow.load().is_some() {
            // Shadowing: from now on replies from the shared connection are split one by
            // one, which is only possible from a reply boundary (nothing in flight).
            self.mux_framing = true;
        }
        self.process_requests_inner().await;
        self.flush_mux_batch();
    }

    pub(super) async fn process_requests_inner(&mut self) {
        while (!self.client_in.is_empty() || self.held.is_some())
            && (!self.stop_reading || self.streaming_request)
        {
            if self.take_plain_run() {
                continue;
            }
            let req = match self.held.take() {
                Some(req) => req,
                None => match self.parse_request() {
                    Ok(Some(req)) => req,
                    Ok(None) => {
                        self.stream_partial_request().await;
                        return;
                    }
                    Err(e) => {
                        telemetry::error("protocol");
                        tracing::debug!(peer = %self.peer, error = %e, "malformed request");
                        let mut reply = BytesMut::new();
                        push_error(&mut reply, &format!("ERR {e}"));
                        self.client_in.clear();
                        self.local(command::KNOWN_COMMANDS.len(), reply.freeze(), true);
                        return;
                    }
                },
            };
            if !self.streaming_request {
                // Where this command goes (`dest.rs`: the one decision).
                let own = self.pinned || self.needs_own_connection(&req);
                if self.dest(own) == Dest::Wait {
                    self.flush_mux_batch();
                    self.held = Some(req);
                    return;
                }
            }
            if self.waits_for_keys(&req) {
                self.flush_mux_batch();
                self.held = Some(req);
                self.key_wait = true;
                return;
            }
            self.key_wait = false;
            if !self.mux_fast_path(&req) {
                self.dispatch(req).await;
            }
            // (A write answered by the proxy itself never took its keys to the server.)
            self.next_guard = None;
        }
    }

    /// Frames the next command of `client_in`, with Redis' limits for a client that has not
    /// logged in yet (`[proxy] password`).
    pub(super) fn parse_request(&mut self) -> Result<Option<Request>, crate::resp::ProtocolError> {
        self.req.set_unauthenticated(!self.conn.authenticated);
        self.req.parse(&self.client_in)
    }

    pub(super) async fn dispatch(&mut self, req: Request) {
        match req {
            Request::Empty { len } => self.client_in.advance(len),
            Request::Inline { len, args } => {
                self.client_in.advance(len);
                let mut wire = Vec::new();
                encode_command(&args, &mut wire);
                let mut argv: [&[u8]; CAPTURED_ARGS] = [&[]; CAPTURED_ARGS];
                for (slot, a) in argv.iter_mut().zip(&args) {
                    *slot = a;
                }
                let n = args.len().min(CAPTURED_ARGS);
                self.command(&argv[..n], args.len() as u64, &wire).await;
            }
            Request::Array { len, argc, args } => {
                if self.streaming_request {
                    // The tail of a command whose head was already forwarded.
                    self.streaming_request = false;
                    if !std::mem::take(&mut self.discard_request) {
                        let buf = std::mem::take(&mut self.client_in);
                        if let Some(out) = self.backend_out() {
                            out.extend_from_slice(&buf[..len]);
                        }
                        self.client_in = buf;
                    }
                    self.client_in.advance(len);
                    return;
                }
                // Borrow the frame in place (no copy, no split): the buffer is lent out
                // while the command is handled and put back after.
                let buf = std::mem::take(&mut self.client_in);
                let frame = &buf[..len];
                let mut argv: [&[u8]; CAPTURED_ARGS] = [&[]; CAPTURED_ARGS];
                for (i, slot) in argv.iter_mut().enumerate().take(args.len()) {
                    *slot = args.get(frame, i).unwrap_or_default();
                }
                self.command(&argv[..args.len()], argc, frame).await;
                self.client_in = buf;
                self.client_in.advance(len);
            }
        }
    }

    /// A huge command (a 512 MB value, a million arguments) is forwarded as it arrives instead
    /// of being buffered whole, once its name is known and it is an ordinary command.
    pub(super) async fn stream_partial_request(&mut self) {
        let scanned = self.req.scanned();
        if scanned < STREAM_THRESHOLD {
            return;
        }
        if !self.streaming_request {
            let args = self.req.pending_args();
            let name = args.get(&self.client_in, 0);
            let streamable = name.is_some_and(|name| {
                let kind = command::classify(
                    name,
                    args.get(&self.client_in, 1),
                    args.get(&self.client_in, 2),
                    self.req.pending_argc(),
                );
                kind == Kind::Plain && self.conn.authenticated
            });
            let limit = self.shared.settings.buffer_limit;
            if !streamable {
                // Control commands are never this big: they are buffered whole, up to the
                // buffer limit; beyond it they are refused (a full buffer could never drain).
                if self.client_in.len() >= limit {
                    self.refuse_partial_request();
                }
                return;
            }
            // While writes are shadowed, a write is kept whole (up to the buffer limit) so
            // that its shadow and its place in the per-key order are known. One bigger than
            // the limit is still forwarded, but the old side cannot be kept equal for it: the
            // rollback becomes unsafe and says why.
            let cmd = command::command_id(name.unwrap_or_default());
            if shadow::is_write(cmd)
                && let Some(sink) = self.shared.shadow.load_full()
            {
                if self.client_in.len() < limit {
                    return;
                }
                let shown = name.map_or_else(String::new, |n| {
                    String::from_utf8_lossy(&n[..n.len().min(32)]).to_uppercase()
                });
                sink.mark_unsafe(&format!(
                    "a {shown} write of more than {limit} bytes (proxy.buffer_limit_bytes) went \
                     to the primary without a shadow"
                ));
            }
            // The head of a streamed write goes where any command goes (`dest.rs`); the rest
            // of it follows on the same connection (the gate lets no move in between).
            if self.dest(true) != Dest::Own {
                return;
            }
            let args = self.req.pending_args();
            let name = args.get(&self.client_in, 0);
            let cmd = command::command_id(name.unwrap_or_default());
            telemetry::commands().received(cmd, 1);
            if command::learns_script(cmd) {
                // An `EVAL` with big arguments: its body, when whole in the head, is learned
                // like any other (a body itself above the streaming size is not: see
                // ARCHITECTURE.md, *The proxy keeps the scripts*).
                let argv: Vec<&[u8]> = (0..3).map_while(|i| args.get(&self.client_in, i)).collect();
                self.learn_script(&argv);
            }
            if command::calls_script(cmd) {
                // A streamed `EVALSHA` is not kept for a retry: what was kept before is not it.
                self.evalsha_sent = None;
            }
            let head = self.client_in.split_to(scanned);
            self.req.forwarded(scanned);
            // (Marked as streaming only once sent: the connection is chosen first.)
            let sent = self
                .forward(cmd, &head, Expect::Replies(1), Effect::None)
                .await;
            self.streaming_request = true;
            self.discard_request = !sent;
            return;
        }
        let chunk = self.client_in.split_to(scanned);
        self.req.forwarded(scanned);
        if !self.discard_request
            && let Some(out) = self.backend_out()
        {
            out.extend_from_slice(&chunk);
        }
    }

    /// A command that cannot be streamed (connection state, not logged in, name unknown yet)
    /// filled the client buffer: it is answered with an error and the rest of it is read and
    /// dropped, so the session neither stalls nor holds more than the limit.
    pub(super) fn refuse_partial_request(&mut self) {
        let name = self.req.pending_args().get(&self.client_in, 0);
        let cmd = name.map_or(command::KNOWN_COMMANDS.len(), command::command_id);
        let shown = name.map_or_else(
            || "a command whose name".to_string(),
            |n| String::from_utf8_lossy(&n[..n.len().min(32)]).to_uppercase(),
        );
        let limit = self.shared.settings.buffer_limit;
        telemetry::error("request_too_big");
        tracing::debug!(peer = %self.peer, command = %shown, limit, "request too big to buffer; refused");
        let scanned = self.req.scanned();
        self.client_in.advance(scanned);
        self.req.forwarded(scanned);
        self.streaming_request = true;
        self.discard_request = true;
        let msg = format!(
            "ERR cutover: {shown} is longer than the proxy's buffer limit ({limit} bytes); only ordinary data commands are streamed through. Send a shorter command (or raise [proxy] buffer_limit_bytes)"
        );
        self.local_error(cmd, &msg);
    }
}
