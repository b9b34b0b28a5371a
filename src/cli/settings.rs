//! `cutover run`'s settings: flags and environment variables (which win) merged over the
//! config file, checked once at start.

use super::*;

/// Merges flags/env (which win) over the config file.
pub fn resolve_settings(args: &RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let proxy_tls = proxy_tls(args, &file)?;
    let listen = args
        .proxy_listen
        .clone()
        .or(file.proxy.listen)
        .unwrap_or_else(|| config::DEFAULT_PROXY_LISTEN.to_string());
    let source = args
        .source
        .clone()
        .or(file.source.url)
        .ok_or(ConfigError::Missing("[source] url (--source)"))?;
    let target = args.target.clone().or(file.target.url);
    let password = args.proxy_password.clone().or(file.proxy.password);
    let user = args.proxy_user.clone().or(file.proxy.user);
    if user.is_some() && password.is_none() {
        return Err(ConfigError::Invalid {
            key: "proxy.user",
            value: user.unwrap_or_default(),
            reason: "a proxy user needs [proxy] password".into(),
        });
    }
    let admin = match args.admin_listen.clone().or(file.admin.listen) {
        Some(listen) => {
            let addr = config::parse_addr("admin.listen", &listen)?;
            let token = args.admin_token.clone().or(file.admin.token);
            config::check_admin_addr(addr, file.admin.allow_remote.unwrap_or(false), &token)?;
            let tls = config::ServerTlsFiles::from_pair(
                "admin.tls_cert_file",
                args.admin_tls_cert.clone().or(file.admin.tls_cert_file),
                args.admin_tls_key.clone().or(file.admin.tls_key_file),
                None,
            )?;
            Some(AdminSettings {
                listen: addr,
                token,
                tls,
            })
        }
        None => None,
    };
    let metrics = args
        .metrics_listen
        .clone()
        .or(file.metrics.listen)
        .map(|m| config::parse_addr("metrics.listen", &m))
        .transpose()?;
    let mut cutover = crate::cutover::CutoverSettings::default();
    if let Some(ms) = file.cutover.max_pause_ms {
        cutover.max_pause = Duration::from_millis(ms);
    }
    if let Some(b) = file.cutover.max_lag_bytes {
        cutover.max_lag_bytes = b;
    }
    if let Some(ms) = file.sync.max_clock_skew_ms {
        cutover.max_clock_skew_ms = ms;
    }
    if let Some(n) = file.cutover.shadow_queue {
        if n == 0 {
            return Err(ConfigError::Invalid {
                key: "cutover.shadow_queue",
                value: n.to_string(),
                reason: "must be at least 1".into(),
            });
        }
        cutover.shadow_queue = n;
    }
    if let Some(ms) = file.cutover.stalled_client_disconnect_ms {
        cutover.stalled_disconnect = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(n) = file.cutover.script_cache_scripts {
        cutover.script_cache_scripts = n;
    }
    if let Some(n) = file.cutover.script_cache_bytes {
        cutover.script_cache_bytes = n;
    }
    if let Some(mode) = args.overlap.clone().or(file.cutover.overlap) {
        cutover.overlap =
            crate::cutover::overlap::OverlapMode::parse(&mode).ok_or(ConfigError::Invalid {
                key: "cutover.overlap",
                value: mode.clone(),
                reason: "must be \"auto\", \"replica\" or \"shadow\"".into(),
            })?;
    }
    let buffer_limit = file.proxy.buffer_limit_bytes.unwrap_or(4 * 1024 * 1024);
    if buffer_limit < 64 * 1024 {
        return Err(ConfigError::Invalid {
            key: "proxy.buffer_limit_bytes",
            value: buffer_limit.to_string(),
            reason: "must be at least 65536".into(),
        });
    }
    let source = RedisUrl::parse_with_tls(&source, &args.source_tls.over(&file.source.tls))?;
    let target_tls = args.target_tls.over(&file.target.tls);
    let target = target
        .map(|t| RedisUrl::parse_with_tls(&t, &target_tls))
        .transpose()?;
    check_tls(&source, "source.tls")?;
    if let Some(t) = &target {
        check_tls(t, "target.tls")?;
    }
    let sync = sync_tuning(&file.sync, &SyncTuningArgs::default())?;
    Ok(Settings {
        sync,
        proxy: ProxySettings {
            listen: config::parse_addr("proxy.listen", &listen)?,
            auth: ClientAuth { user, password },
            max_clients: args
                .max_clients
                .or(file.proxy.max_clients)
                .unwrap_or(10_000),
            connect_timeout: Duration::from_millis(file.proxy.connect_timeout_ms.unwrap_or(2_000)),
            buffer_limit,
            tls: proxy_tls,
        },
        source,
        target,
        admin,
        metrics,
        cutover,
    })
}

/// `[proxy] tls_listen` and its files (flags win): all of listen, cert and key, or none.
fn proxy_tls(args: &RunArgs, file: &FileConfig) -> Result<Option<config::ProxyTls>, ConfigError> {
    let p = &file.proxy;
    let files = config::ServerTlsFiles::from_pair(
        "proxy.tls_cert_file",
        args.proxy_tls_cert.clone().or(p.tls_cert_file.clone()),
        args.proxy_tls_key.clone().or(p.tls_key_file.clone()),
        args.proxy_tls_client_ca
            .clone()
            .or(p.tls_client_ca_file.clone()),
    )?;
    let listen = args.proxy_tls_listen.clone().or(p.tls_listen.clone());
    match (listen, files) {
        (None, None) => Ok(None),
        (Some(l), Some(files)) => Ok(Some(config::ProxyTls {
            listen: config::parse_addr("proxy.tls_listen", &l)?,
            files,
            handshake_timeout: Duration::from_millis(p.tls_handshake_timeout_ms.unwrap_or(5_000)),
        })),
        (Some(l), None) => Err(ConfigError::Invalid {
            key: "proxy.tls_listen",
            value: l,
            reason: "a TLS listener needs [proxy] tls_cert_file and tls_key_file".into(),
        }),
        (None, Some(f)) => Err(ConfigError::Invalid {
            key: "proxy.tls_cert_file",
            value: f.cert_file.display().to_string(),
            reason: "set [proxy] tls_listen (HOST:PORT) for the TLS listener".into(),
        }),
    }
}

/// Builds the TLS configuration of a side now, so a missing or broken `ca_file`/`cert_file`
/// is reported at start (and `insecure` warned about once), not at the first connection.
pub(super) fn check_tls(url: &RedisUrl, key: &'static str) -> Result<(), ConfigError> {
    if url.tls.is_some() {
        crate::client::Endpoint::new(url).map_err(|e| ConfigError::Invalid {
            key,
            value: url.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[source]\nurl = \"redis://127.0.0.1:1\"\n[source.tls]\ninsecure = true\nserver_name = \"a.test\"\n[target]\nurl = \"redis://127.0.0.1:2\"\n",
        )
        .unwrap();
        let mut args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        let s = resolve_settings(&args).unwrap();
        let tls = s.source.tls.as_ref().expect("[source.tls] turns TLS on");
        assert!(tls.insecure);
        assert_eq!(tls.server_name.as_deref(), Some("a.test"));
        assert!(
            s.target.as_ref().unwrap().tls.is_none(),
            "off unless configured"
        );
        // A flag overrides the file's server_name; a missing CA file stops the start.
        args.source_tls.server_name = Some("b.test".into());
        args.target_tls.ca_file = Some("/nonexistent/ca.pem".into());
        let e = resolve_settings(&args).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        args.target_tls.ca_file = None;
        let s = resolve_settings(&args).unwrap();
        assert_eq!(s.source.tls.unwrap().server_name.as_deref(), Some("b.test"));
    }

    #[test]
    fn sync_flags_win_over_the_file() {
        let file = FileConfig::parse(
            "[sync]\ndb_map = \"0=1\"\nbatch_size = 50\nunsupported = \"fail\"\nexclude_prefixes = [\"tmp:\"]\n",
            "test",
        )
        .unwrap();
        let t = sync_tuning(&file.sync, &SyncTuningArgs::default()).unwrap();
        assert_eq!(t.batch_size, 50);
        assert_eq!(t.pipeline, crate::sync::target::DEFAULT_WINDOW);
        assert_eq!(t.unsupported, crate::sync::convert::UnsupportedPolicy::Fail);
        assert_eq!(t.filter.map_db(0), Some(1));
        assert!(!t.filter.key_allowed(b"tmp:x"));
        let flags = SyncTuningArgs {
            batch_size: Some(7),
            unsupported: Some("skip".into()),
            exclude_prefixes: vec!["other:".into()],
            ..SyncTuningArgs::default()
        };
        let t = sync_tuning(&file.sync, &flags).unwrap();
        assert_eq!(t.batch_size, 7);
        assert_eq!(t.unsupported, crate::sync::convert::UnsupportedPolicy::Skip);
        assert!(t.filter.key_allowed(b"tmp:x"));
        assert!(!t.filter.key_allowed(b"other:x"));
        for bad in [
            "[sync]\nbatch_size = 0\n",
            "[sync]\nbig_key_bytes = 100000000\n",
            "[sync]\nonly_mapped_dbs = true\n",
            "[sync]\nexclude_commands = [\"MULTI\"]\n",
        ] {
            let file = FileConfig::parse(bad, "test").unwrap();
            assert!(
                sync_tuning(&file.sync, &SyncTuningArgs::default()).is_err(),
                "{bad}"
            );
        }
        assert!(FileConfig::parse("[sync]\nunknown = 1\n", "test").is_err());
    }
}
