//! Commands that need more than forwarding: the proxy's own `AUTH`/`HELLO`, replies it makes
//! itself, and forwarding with the effect a command has on the connection's state.

use super::*;

impl Session {
    pub(super) async fn command(&mut self, argv: &[&[u8]], argc: u64, wire: &[u8]) {
        let Some(&name) = argv.first() else { return };
        let (cmd, kind) = self.classified.take().unwrap_or_else(|| {
            let kind = command::classify(name, argv.get(1).copied(), argv.get(2).copied(), argc);
            (command::command_id(name), kind)
        });
        telemetry::commands().received(cmd, 1);
        self.next_shadow = None;
        if command::learns_script(cmd) && self.conn.authenticated {
            self.learn_script(argv);
        }
        if command::calls_script(cmd) && self.conn.authenticated {
            note_evalsha(&mut self.last_sha, &self.shared.scripts, wire);
            self.keep_evalsha(wire);
        }
        if shadow::is_write(cmd) && self.conn.authenticated {
            self.capture_shadow(cmd, wire);
        }
        let proxy_auth = self.shared.settings.auth.password.is_some();
        if !self.conn.authenticated && !matches!(kind, Kind::Auth | Kind::Hello | Kind::Quit) {
            telemetry::error("auth");
            return self.local_error(cmd, "NOAUTH Authentication required.");
        }
        match kind {
            Kind::Plain | Kind::Exec | Kind::Discard | Kind::Unwatch if !self.pinned => {
                self.mux_push(cmd, wire);
            }
            Kind::ConfigGet if !proxy_auth && !self.pinned => self.mux_push(cmd, wire),
            Kind::ConfigGet => {
                // A proxy with its own password does not hand out the backend's.
                if self.conn.in_multi {
                    self.txn_masks |= proxy_auth;
                } else {
                    self.mask_next = proxy_auth;
                }
                self.forward(cmd, wire, Expect::Replies(1), Effect::None)
                    .await;
                self.mask_next = false;
            }
            Kind::Auth if proxy_auth => {
                let reply = match argv.len() {
                    2 => self.check_auth(None, argv[1]),
                    3 => self.check_auth(Some(argv[1]), argv[2]),
                    _ => Err("ERR wrong number of arguments for 'auth' command"),
                };
                match reply {
                    Ok(()) => {
                        self.conn.authenticated = true;
                        self.local(cmd, Bytes::from_static(b"+OK\r\n"), false)
                    }
                    Err(e) => {
                        telemetry::error("auth");
                        self.local_error(cmd, e)
                    }
                }
            }
            Kind::Hello if proxy_auth => self.hello_with_proxy_auth(cmd, argv, argc).await,
            Kind::Hello => {
                let effect = hello_effect(argv);
                self.forward(cmd, wire, Expect::Replies(1), effect).await;
            }
            Kind::Quit => self.local(cmd, Bytes::from_static(b"+OK\r\n"), true),
            Kind::Monitor => {
                self.forward(cmd, wire, Expect::Replies(1), Effect::Monitor)
                    .await;
            }
            Kind::Refused(msg) => {
                telemetry::error("refused");
                self.local_error(cmd, msg)
            }
            Kind::Select => {
                let effect = argv
                    .get(1)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
                    .map_or(Effect::None, Effect::Select);
                self.forward_stateful(cmd, wire, effect).await;
            }
            Kind::ClientSetName => {
                let name = argv
                    .get(2)
                    .filter(|n| !n.is_empty())
                    .map(|n| Box::new(Bytes::copy_from_slice(n)));
                self.forward_stateful(cmd, wire, Effect::SetName(name))
                    .await;
            }
            Kind::ClientReply(mode) => {
                let expect = match mode {
                    ReplyMode::On => Expect::Replies(1),
                    _ => Expect::Replies(0),
                };
                self.conn.reply_off = mode == ReplyMode::Off;
                self.conn.skip_next = mode == ReplyMode::Skip;
                self.send(cmd, wire, expect, Effect::None).await;
            }
            Kind::Multi => {
                self.forward(cmd, wire, Expect::Replies(1), Effect::Multi)
                    .await;
                self.conn.in_multi = true;
            }
            Kind::Exec if std::mem::take(&mut self.watch_broken) && self.conn.in_multi => {
                // A flip moved the watched keys to another server: fail the transaction the
                // way Redis does when a watched key changed.
                self.exec_nil = true;
                self.forward(
                    cmd,
                    b"*1\r\n$7\r\nDISCARD\r\n",
                    Expect::Replies(1),
                    Effect::Discard,
                )
                .await;
                self.exec_nil = false;
                self.conn.in_multi = false;
            }
            Kind::Exec | Kind::Discard => {
                let masks = std::mem::take(&mut self.txn_masks);
                let effect = if kind == Kind::Exec {
                    self.mask_next = masks;
                    Effect::Exec
                } else {
                    self.watch_broken = false;
                    Effect::Discard
                };
                self.forward(cmd, wire, Expect::Replies(1), effect).await;
                self.mask_next = false;
                self.conn.in_multi = false;
            }
            Kind::Watch => {
                self.forward(cmd, wire, Expect::Replies(1), Effect::Watch)
                    .await;
            }
            Kind::Unwatch => {
                self.watch_broken = false;
                self.forward(cmd, wire, Expect::Replies(1), Effect::Unwatch)
                    .await;
            }
            Kind::Reset => {
                if self
                    .forward(cmd, wire, Expect::Replies(1), Effect::Reset)
                    .await
                {
                    // RESET also logs the backend connection out: log the proxy back in,
                    // before any command the client pipelined after it.
                    self.conn.in_multi = false;
                    self.restore_backend_login();
                }
            }
            Kind::Subscribe(_) => {
                let n = argc.saturating_sub(1).max(1) as u32;
                self.forward(cmd, wire, Expect::Replies(n), Effect::None)
                    .await;
            }
            Kind::Unsubscribe(k) => {
                let expect = if argc <= 1 {
                    Expect::AllSubs(k)
                } else {
                    Expect::Replies((argc - 1) as u32)
                };
                self.forward(cmd, wire, expect, Effect::None).await;
            }
            Kind::Auth => {
                // `AUTH pass` logs in as `default`.
                let user = if argv.len() >= 3 { argv[1] } else { b"default" };
                let effect = Effect::Login(Box::new(Bytes::copy_from_slice(user)));
                self.forward_stateful(cmd, wire, effect).await
            }
            Kind::Plain | Kind::OwnConnection => {
                if let (Some(sub), Some(mode)) = (argv.get(1), argv.get(2))
                    && name.eq_ignore_ascii_case(b"client")
                    && sub.eq_ignore_ascii_case(b"tracking")
                {
                    self.conn.tracking = mode.eq_ignore_ascii_case(b"on");
                }
                match ClientOpt::of(argv) {
                    Some(opt) => self.forward_stateful(cmd, wire, Effect::Client(opt)).await,
                    None => {
                        self.forward(cmd, wire, Expect::Replies(1), Effect::None)
                            .await;
                    }
                }
            }
        }
    }

    /// Forwards a command whose state change is deferred to `EXEC` inside a transaction.
    pub(super) async fn forward_stateful(&mut self, cmd: usize, wire: &[u8], effect: Effect) {
        if self.conn.in_multi {
            self.conn.multi_effects.push(effect);
            self.forward(cmd, wire, Expect::Replies(1), Effect::None)
                .await;
        } else {
            self.forward(cmd, wire, Expect::Replies(1), effect).await;
        }
    }

    pub(super) fn check_auth(&self, user: Option<&[u8]>, pass: &[u8]) -> Result<(), &'static str> {
        let want = &self.shared.settings.auth;
        let user_ok = match (&want.user, user) {
            (Some(w), Some(u)) => constant_time_eq(w.as_bytes(), u),
            (Some(w), None) => w == "default",
            (None, Some(u)) => u == b"default",
            (None, None) => true,
        };
        let pass_ok = want
            .password
            .as_ref()
            .is_some_and(|p| constant_time_eq(p.as_bytes(), pass));
        if user_ok && pass_ok {
            Ok(())
        } else {
            Err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]` when the proxy has its own password:
    /// the AUTH part is checked here and never forwarded; the rest goes to the backend.
    pub(super) async fn hello_with_proxy_auth(&mut self, cmd: usize, argv: &[&[u8]], argc: u64) {
        if argc as usize > argv.len() {
            return self.local_error(cmd, "ERR Syntax error in HELLO option");
        }
        // Redis checks the protocol version before the credentials: `HELLO 4 AUTH <right>`
        // fails with NOPROTO and leaves the client logged out.
        if let Some(v) = argv.get(1) {
            match request::parse_int(v) {
                Some(2 | 3) => {}
                Some(_) => return self.local_error(cmd, "NOPROTO unsupported protocol version"),
                None => {
                    return self.local_error(
                        cmd,
                        "ERR Protocol version is not an integer or out of range",
                    );
                }
            }
        }
        let mut forwarded: Vec<&[u8]> = vec![b"HELLO"];
        let mut auth: Option<(&[u8], &[u8])> = None;
        let mut i = 1;
        if let Some(v) = argv.get(1) {
            forwarded.push(v);
            i = 2;
        }
        while i < argv.len() {
            let opt = argv[i];
            if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < argv.len() {
                auth = Some((argv[i + 1], argv[i + 2]));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < argv.len() {
                forwarded.extend_from_slice(&argv[i..i + 2]);
                i += 2;
            } else {
                let msg = format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                );
                return self.local_error(cmd, &msg);
            }
        }
        match auth {
            Some((user, pass)) => match self.check_auth(Some(user), pass) {
                Ok(()) => self.conn.authenticated = true,
                Err(e) => {
                    telemetry::error("auth");
                    return self.local_error(cmd, e);
                }
            },
            None if !self.conn.authenticated => {
                telemetry::error("auth");
                return self.local_error(
                    cmd,
                    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                );
            }
            None => {}
        }
        let effect = hello_effect(&forwarded);
        let mut wire = Vec::new();
        encode_command(&forwarded, &mut wire);
        self.forward(cmd, &wire, Expect::Replies(1), effect).await;
    }

    pub(super) fn local_error(&mut self, cmd: usize, msg: &str) {
        let mut reply = BytesMut::new();
        push_error(&mut reply, msg);
        self.local(cmd, reply.freeze(), false);
    }

    /// Queues a reply made by the proxy, in order with the replies still to come.
    pub(super) fn local(&mut self, cmd: usize, reply: Bytes, close: bool) {
        // Keep order: the commands collected for the shared connection go before this reply.
        self.flush_mux_batch();
        if close {
            self.stop_reading = true;
        }
        if self.silenced() && !close {
            return;
        }
        self.pending.push_back(Pending {
            cmd,
            started: self.batch_started,
            expect: Expect::Local {
                reply: Box::new(reply),
                close,
            },
            effect: Effect::None,
            swallow: false,
            via_mux: false,
            reissue: None,
            nil_reply: false,
            mask_secrets: false,
            shadow: None,
        });
        self.drain_local();
    }

    /// `CLIENT REPLY OFF|SKIP` in force for this command.
    pub(super) fn silenced(&mut self) -> bool {
        self.conn.reply_off || std::mem::take(&mut self.conn.skip_next)
    }

    /// Forwards a client command; `false` if no backend could be reached (the client got an
    /// error reply instead).
    pub(super) async fn forward(
        &mut self,
        cmd: usize,
        wire: &[u8],
        expect: Expect,
        effect: Effect,
    ) -> bool {
        let expect = if self.silenced() {
            Expect::Replies(0)
        } else {
            expect
        };
        self.send(cmd, wire, expect, effect).await
    }

    /// Sends a client command on the session's own connection (opening it if needed).
    pub(super) async fn send(
        &mut self,
        cmd: usize,
        wire: &[u8],
        expect: Expect,
        effect: Effect,
    ) -> bool {
        if let Err(msg) = self.ensure_upstream().await {
            if !matches!(expect, Expect::Replies(0)) {
                self.local_error(cmd, &format!("ERR cutover: {msg}"));
            }
            return false;
        }
        let reissue = (command::may_block(cmd) && !self.conn.in_multi)
            .then(|| crate::sync::engine::split_args(wire).ok())
            .flatten()
            .filter(|args| {
                command::reissue_blocking(args, Duration::ZERO).is_some()
                    || command::is_replica_wait(args)
            })
            .map(|args| {
                Box::new(Blocking {
                    args: args.iter().map(|a| a.to_vec()).collect(),
                })
            });
        let Some(out) = self.backend_out() else {
            return false;
        };
        out.extend_from_slice(wire);
        if !matches!(expect, Expect::Replies(0)) {
            self.pending.push_back(Pending {
                cmd,
                started: self.batch_started,
                expect,
                effect,
                swallow: false,
                via_mux: false,
                reissue,
                nil_reply: std::mem::take(&mut self.exec_nil),
                mask_secrets: std::mem::take(&mut self.mask_next),
                shadow: self.next_shadow.take(),
            });
        }
        true
    }

    /// Keeps the script body of an `EVAL`/`EVAL_RO` or a `SCRIPT LOAD` for the next move
    /// (`cutover::scripts`); a `SCRIPT FLUSH` empties the registry.
    pub(super) fn learn_script(&self, argv: &[&[u8]]) {
        use crate::cutover::scripts::Origin;
        let scripts = &self.shared.scripts;
        match argv {
            [name, body, ..] if !name.eq_ignore_ascii_case(b"script") => {
                scripts.learn(body, Origin::Eval)
            }
            [_, sub, body, ..] if sub.eq_ignore_ascii_case(b"load") => {
                scripts.learn(body, Origin::Load)
            }
            [_, sub, ..] if sub.eq_ignore_ascii_case(b"flush") => scripts.forget_all(),
            _ => {}
        }
    }
}
