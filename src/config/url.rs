//! `redis://` / `rediss://` URLs: one server (`RedisUrl::parse`) or a list of seed nodes of a
//! cluster (`RedisUrl::parse_seeds`); credentials never printed (`Display`, `Debug`, errors).

use std::fmt;

use super::{ConfigError, TlsOptions};

/// A Redis endpoint parsed from `redis[s]://[user:pass@]host:port[/db][#insecure]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// TLS to this server (`rediss://`, or options from `[side.tls]` / flags); `None`: plain.
    pub tls: Option<TlsOptions>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::Url {
            url: redact(url),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err("missing scheme"))?;
        let tls = match scheme {
            "redis" => false,
            "rediss" => true,
            _ => return Err(err("scheme must be redis:// or rediss://")),
        };
        // redis-rs' `rediss://host/#insecure`: TLS without certificate verification.
        let (rest, insecure) = match rest.split_once('#') {
            None => (rest, false),
            Some((r, "insecure")) if tls => (r, true),
            Some((_, "insecure")) => return Err(err("#insecure needs rediss://")),
            Some(_) => return Err(err("the only fragment understood is #insecure")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| err("credentials are not valid UTF-8 after percent-decoding"))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| decode(u)).transpose()?,
                    Some(decode(p)?),
                ),
                None => (None, Some(decode(ui)?)),
            },
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| err("unclosed [ in IPv6 host"))?;
            let host = &stripped[..end];
            let port = stripped[end + 1..].strip_prefix(':').unwrap_or("6379");
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), "6379"),
            }
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if host.contains(',') || port.contains(',') {
            return Err(err(
                "lists several nodes (a cluster's seed nodes): `cutover verify` takes such a list; here give one node",
            ));
        }
        let port: u16 = port.parse().map_err(|_| err("port is not a number"))?;
        let db_str = path.trim_end_matches('/');
        let db = if db_str.is_empty() {
            0
        } else {
            db_str
                .parse()
                .map_err(|_| err("database after / must be a number"))?
        };
        Ok(RedisUrl {
            host,
            port,
            username,
            password,
            db,
            tls: tls.then(|| TlsOptions {
                insecure,
                ..TlsOptions::default()
            }),
        })
    }

    /// Parses a side's URL, which may list several nodes of a cluster (seeds):
    /// `redis[s]://[user:pass@]host:port,host:port[/db][#insecure]`. Every node gets the same
    /// credentials, database and TLS settings; one node gives a one-element list. A host may
    /// be `[v6]:port`; an empty entry (`a:1,,b:2`) is an error.
    pub fn parse_seeds(url: &str, options: &TlsOptions) -> Result<Vec<Self>, ConfigError> {
        let err = |reason: &str| ConfigError::Url {
            url: redact(url),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(vec![Self::parse_with_tls(url, options)?]);
        };
        let (body, fragment) = match rest.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (rest, None),
        };
        let (authority, path) = match body.find('/') {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body, None),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if !hosts.contains(',') {
            return Ok(vec![Self::parse_with_tls(url, options)?]);
        }
        let mut seeds = Vec::new();
        for host in hosts.split(',') {
            if host.trim().is_empty() {
                return Err(err(
                    "an empty node in the list of nodes (host:port,host:port)",
                ));
            }
            let mut one = format!("{scheme}://");
            if let Some(u) = userinfo {
                one.push_str(u);
                one.push('@');
            }
            one.push_str(host.trim());
            if let Some(p) = path {
                one.push('/');
                one.push_str(p);
            }
            if let Some(f) = fragment {
                one.push('#');
                one.push_str(f);
            }
            let u = Self::parse_with_tls(&one, options).map_err(|e| match e {
                ConfigError::Url { reason, .. } => err(&reason),
                e => e,
            })?;
            if seeds.iter().any(|s: &RedisUrl| s.addr() == u.addr()) {
                return Err(err(&format!("node {} is listed twice", u.addr())));
            }
            seeds.push(u);
        }
        Ok(seeds)
    }

    /// Parses `url` and applies the side's TLS options (`[side.tls]` overlaid by flags): any
    /// option set turns TLS on even for a `redis://` URL.
    pub fn parse_with_tls(url: &str, options: &TlsOptions) -> Result<Self, ConfigError> {
        let mut u = Self::parse(url)?;
        if options.is_set() || u.tls.is_some() {
            u.tls = Some(u.tls.unwrap_or_default().overlaid(options));
        }
        let tls = u.tls.as_ref();
        if tls.is_some_and(|t| t.cert_file.is_some() != t.key_file.is_some()) {
            return Err(ConfigError::Invalid {
                key: "tls",
                value: u.to_string(),
                reason: "cert_file and key_file go together (mutual TLS needs both)".into(),
            });
        }
        Ok(u)
    }

    /// True when the server's certificate is not verified (`insecure`).
    pub fn tls_insecure(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.insecure)
    }

    /// The `AUTH` command (`AUTH pass` or `AUTH user pass`) for the URL's credentials, if any.
    pub fn auth_command(&self) -> Option<Vec<&[u8]>> {
        let pass = self.password.as_ref()?;
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &self.username {
            args.push(user.as_bytes());
        }
        args.push(pass.as_bytes());
        Some(args)
    }

    /// `host:port`, for connecting and for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Never print a password: `Debug` and `Display` show the URL with the secret masked.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (None, Some(_)) => write!(f, "***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.addr(), self.db)?;
        if self.tls_insecure() {
            write!(f, "#insecure")?;
        }
        Ok(())
    }
}

/// Masks the credentials of a URL that failed to parse, for error messages: everything before
/// the last `@` except a recognisable scheme (`redis://`, and the malformed `redis:/`,
/// `redis:`), so a URL without `://` (`user:secret@host:6379`) or with a broken scheme does
/// not print its password either.
fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let keep = match url.find("://") {
        Some(s) if s < at => s + 3,
        _ => {
            let lower = url[..at].to_ascii_lowercase();
            ["rediss:", "redis:"]
                .iter()
                .find(|scheme| lower.starts_with(**scheme))
                .map_or(0, |scheme| {
                    scheme.len()
                        + url[scheme.len()..at]
                            .bytes()
                            .take_while(|&b| b == b'/')
                            .count()
                })
        }
    };
    format!("{}***{}", &url[..keep], &url[at..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    #[test]
    fn parses_a_list_of_seed_nodes() {
        let none = TlsOptions::default();
        let seeds = RedisUrl::parse_seeds(
            "rediss://app:p%2Cw@n1:7000,n2:7001,[::1]:7002#insecure",
            &none,
        )
        .unwrap();
        assert_eq!(seeds.len(), 3);
        assert_eq!(seeds[0].addr(), "n1:7000");
        assert_eq!(seeds[1].addr(), "n2:7001");
        assert_eq!(seeds[2].addr(), "[::1]:7002");
        for s in &seeds {
            assert_eq!(s.password.as_deref(), Some("p,w"));
            assert_eq!(s.username.as_deref(), Some("app"));
            assert!(s.tls_insecure());
        }
        // One node: exactly what `parse_with_tls` gives, every existing form included.
        for one in [
            "redis://h:1",
            "redis://h",
            "redis://:pw@h:1/3",
            "rediss://u:p@[::1]:6380/0#insecure",
            "redis://a,b@h:1",
        ] {
            assert_eq!(
                RedisUrl::parse_seeds(one, &none).unwrap(),
                vec![RedisUrl::parse_with_tls(one, &none).unwrap()],
                "{one}"
            );
        }
        let tls = TlsOptions {
            server_name: Some("x".into()),
            ..TlsOptions::default()
        };
        let seeds = RedisUrl::parse_seeds("redis://a:1,b:2/0", &tls).unwrap();
        assert!(
            seeds
                .iter()
                .all(|s| s.tls.as_ref().unwrap().server_name.as_deref() == Some("x"))
        );
        for bad in [
            "redis://a:1,,b:2",
            "redis://a:1,a:1",
            "redis://a:1,b:x",
            "redis://a:1,",
        ] {
            assert!(RedisUrl::parse_seeds(bad, &none).is_err(), "{bad}");
        }
        // A password never shows in the error of a bad list.
        let e = RedisUrl::parse_seeds("redis://u:secret@a:1,b:x", &none).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        // A list where one node is expected says so.
        let e = RedisUrl::parse("redis://a:1,b:2").unwrap_err();
        assert!(e.to_string().contains("several nodes"), "{e}");
    }

    #[test]
    fn parses_full_url() {
        let u = RedisUrl::parse("redis://app:s%40cret@10.0.0.1:7000/3").unwrap();
        assert_eq!(u.host, "10.0.0.1");
        assert_eq!(u.port, 7000);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.db, 3);
        assert_eq!(u.to_string(), "redis://app:***@10.0.0.1:7000/3");
    }

    #[test]
    fn auth_command_from_credentials() {
        let u = RedisUrl::parse("redis://app:pw@h:1").unwrap();
        assert_eq!(u.auth_command().unwrap(), vec![&b"AUTH"[..], b"app", b"pw"]);
        let u = RedisUrl::parse("redis://:pw@h:1").unwrap();
        assert_eq!(u.auth_command().unwrap(), vec![&b"AUTH"[..], b"pw"]);
        assert!(
            RedisUrl::parse("redis://h:1")
                .unwrap()
                .auth_command()
                .is_none()
        );
    }

    #[test]
    fn parses_password_only_and_defaults() {
        let u = RedisUrl::parse("redis://:pw@localhost").unwrap();
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.port, 6379);
        assert_eq!(u.db, 0);
        let v = RedisUrl::parse("rediss://[::1]:6380/").unwrap();
        assert_eq!(v.tls, Some(TlsOptions::default()));
        assert_eq!(v.addr(), "[::1]:6380");
    }

    #[test]
    fn tls_urls_and_options() {
        let u = RedisUrl::parse("rediss://:pw@h:1/2#insecure").unwrap();
        assert!(u.tls_insecure());
        assert_eq!(u.db, 2);
        assert_eq!(u.to_string(), "rediss://***@h:1/2#insecure");
        assert!(RedisUrl::parse("redis://h:1/#insecure").is_err());
        assert!(RedisUrl::parse("rediss://h:1/#other").is_err());
        assert!(RedisUrl::parse("redis://h:1").unwrap().tls.is_none());
        let ca = TlsOptions {
            ca_file: Some("ca.pem".into()),
            ..TlsOptions::default()
        };
        // Options turn TLS on for redis:// too; none keep it off.
        let u = RedisUrl::parse_with_tls("redis://h:1", &ca).unwrap();
        assert_eq!(u.tls.as_ref().unwrap().ca_file.as_deref(), Some("ca.pem"));
        let u = RedisUrl::parse_with_tls("redis://h:1", &TlsOptions::default()).unwrap();
        assert!(u.tls.is_none());
        let u = RedisUrl::parse_with_tls("rediss://h:1/#insecure", &ca).unwrap();
        assert!(u.tls_insecure());
        let half = TlsOptions {
            cert_file: Some("c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(RedisUrl::parse_with_tls("rediss://h:1", &half).is_err());
        let f = FileConfig::parse(
            "[source]\nurl = \"redis://h:1\"\n[source.tls]\nca_file = \"ca.pem\"\nserver_name = \"redis.test\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(f.source.tls.server_name.as_deref(), Some("redis.test"));
    }

    #[test]
    fn rejects_bad_urls_without_leaking_secrets() {
        for bad in [
            "http://h:1",
            "redis://h:notaport",
            "redis://h:1/x",
            "h:1",
            "redis://:1",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "redis://u:topsecret@h:x",
            "default:topsecret@127.0.0.1:6379",
            "redis:/default:topsecret@127.0.0.1:6379",
            "redis:default:topsecret@h",
            "REDIS:/:topsecret@h",
            "http://u:topsecret@h:1",
            "redis//u:topsecret@h",
            "u:top@secret@h",
            ":topsecret@",
        ] {
            let e = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(
                !e.contains("topsecret") && !e.contains("secret@"),
                "{bad}: {e}"
            );
            assert!(e.contains("***@"), "{bad}: {e}");
        }
        let e = RedisUrl::parse("redis:/u:pw@h:1").unwrap_err().to_string();
        assert!(e.contains("\"redis:/***@h:1\""), "{e}");
    }
}
