//! The authority of a server: the key under which the client keeps everything
//! it knows about that server (entitlements, storage), and the server's origin.
//!
//! An authority is the lower-cased host (IDNA-encoded by the `url` crate, IPv6
//! in brackets) plus `:port` when the port is neither 80 nor 443, the web's
//! default ports (`ws`/`http` and `wss`/`https`), whatever the scheme:
//! `example.com` is the server at `ws://example.com/` and at
//! `wss://example.com/`, so a URL with the other scheme's default port
//! (`ws://example.com:443/`, which reaches the same port as `wss://`) and an
//! authority typed with either (`example.com:443`, `example.com:80`) name it
//! too. Because it names a directory under `~/.terminalwire/authorities/`, it
//! must also be a safe single directory name; URLs whose authority would not
//! be are refused.

use std::fmt;
use std::str::FromStr;

use url::{Host, Url};

/// The URL schemes a terminalwire server can be reached with.
const SERVER_SCHEMES: [&str; 4] = ["ws", "wss", "http", "https"];

/// The default ports of those schemes, which an authority leaves out.
const WEB_PORTS: [u16; 2] = [80, 443];

/// A validated authority such as `example.com` or `example.com:3000`.
///
/// It is always a safe single directory name: not empty, no `/`, `\`, NUL or
/// `..`, and it does not start with `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Authority(String);

/// Why a URL or a typed string is not a usable authority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The text is not a URL nor a `host[:port]` authority.
    #[error("{input:?} is not a valid URL or authority: {reason}")]
    Invalid {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is not one a terminalwire server is reached with.
    #[error("{url:?} has scheme {scheme:?}; expected ws, wss, http or https")]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URL has no host.
    #[error("{url:?} has no host")]
    NoHost {
        /// The URL.
        url: String,
    },
    /// The authority would not be a safe single directory name.
    #[error("{authority:?} cannot be used as an authority: it is not a safe directory name")]
    Unsafe {
        /// The authority that was derived.
        authority: String,
    },
}

impl Authority {
    /// The authority of a server URL (`ws`, `wss`, `http` or `https`).
    ///
    /// ```
    /// # use terminalwire_policy::Authority;
    /// let url = url::Url::parse("wss://Example.COM:443/terminal").unwrap();
    /// assert_eq!(Authority::from_url(&url).unwrap().as_str(), "example.com");
    /// ```
    pub fn from_url(url: &Url) -> Result<Authority, AuthorityError> {
        let scheme = url.scheme();
        if !SERVER_SCHEMES.contains(&scheme) {
            return Err(AuthorityError::UnsupportedScheme {
                url: url.to_string(),
                scheme: scheme.to_owned(),
            });
        }
        let host = url.host().ok_or_else(|| AuthorityError::NoHost {
            url: url.to_string(),
        })?;
        // Port 0 asks the system for any free port when listening: no
        // server is reached on it.
        if url.port() == Some(0) {
            return Err(AuthorityError::Invalid {
                input: url.to_string(),
                reason: PORT_ZERO.to_owned(),
            });
        }
        // `url` already drops the scheme's own default port; `from_parts`
        // drops the other's.
        Authority::from_parts(&host, url.port())
    }

    /// An authority typed by a user (`example.com:3000`, `[::1]:8080`) or a
    /// server URL (anything containing `://`).
    ///
    /// A typed authority is normalised like a URL's: `example.com:443` and
    /// `example.com:80` are `example.com`.
    pub fn parse(input: &str) -> Result<Authority, AuthorityError> {
        let invalid = |reason: &str| AuthorityError::Invalid {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.contains("://") {
            if has_no_host(input) {
                return Err(AuthorityError::NoHost {
                    url: input.to_owned(),
                });
            }
            let url = Url::parse(input).map_err(|e| invalid(&e.to_string()))?;
            return Authority::from_url(&url);
        }
        // `example.com/`, `example.com:3000/terminal`: a URL's path typed
        // with its authority, not a host name the IDNA rules refuse.
        if let Some(at) = input.find(['/', '?', '#']) {
            let before = &input[..at];
            return Err(match Authority::parse(before) {
                Ok(meant) if !before.is_empty() => invalid(&format!(
                    "an authority is host[:port], without a path: `{meant}`"
                )),
                _ => invalid(
                    "an authority is host[:port], without a path, such as `example.com:3000`",
                ),
            });
        }
        let (host, port) = if let Some(rest) = input.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid("unclosed '['"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("unexpected text after ']'"))?,
                ),
            };
            (&input[..inside.len() + 2], port)
        } else {
            match input.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (input, None),
            }
        };
        let port = port
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("the port is not a number"));
                }
                p.parse::<u16>()
                    .map_err(|_| invalid("the port is out of range"))
            })
            .transpose()?;
        if port == Some(0) {
            return Err(invalid(PORT_ZERO));
        }
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        let host = Host::parse(host).map_err(|e| invalid(&e.to_string()))?;
        Authority::from_parts(&host, port)
    }

    /// The authority as text, e.g. `example.com:3000`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_parts<S: AsRef<str>>(
        host: &Host<S>,
        port: Option<u16>,
    ) -> Result<Authority, AuthorityError> {
        // `Host`'s Display puts IPv6 addresses in brackets.
        let mut text = host.to_string().to_ascii_lowercase();
        // `example.com.` is `example.com` (the same server, the same
        // certificate): one folder, one pin, one set of grants.
        if let Host::Domain(_) = host
            && let Some(stripped) = text.strip_suffix('.')
            && !stripped.is_empty()
        {
            text = stripped.to_owned();
        }
        // `[::ffff:127.0.0.1]` is `127.0.0.1` (an IPv4 address as IPv6
        // writes it): one authority too.
        if let Host::Ipv6(address) = host
            && let Some(v4) = address.to_ipv4_mapped()
        {
            text = v4.to_string();
        }
        // 80 and 443 are the ports of `example.com` itself (`ws://` and
        // `wss://`): one authority for the server on either, whether a URL
        // or the user named the port. A typed `example.com:443` had a
        // folder, pin and grant set of its own, which no session used.
        if let Some(port) = port.filter(|port| !WEB_PORTS.contains(port)) {
            text.push(':');
            text.push_str(&port.to_string());
        }
        if is_safe_dir_name(&text) {
            Ok(Authority(text))
        } else {
            Err(AuthorityError::Unsafe { authority: text })
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Authority {
    type Err = AuthorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Authority::parse(s)
    }
}

impl AsRef<str> for Authority {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The http(s) origin of a server URL, e.g. `https://example.com:3000`:
/// `ws` becomes `http`, `wss` becomes `https`, and a default port is left out.
/// This is the origin the server may always open in the browser.
///
/// ```
/// # use terminalwire_policy::authority::origin;
/// let url = url::Url::parse("wss://example.com/terminal").unwrap();
/// assert_eq!(origin(&url).unwrap(), "https://example.com");
/// ```
pub fn origin(url: &Url) -> Result<String, AuthorityError> {
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => {
            return Err(AuthorityError::UnsupportedScheme {
                url: url.to_string(),
                scheme: other.to_owned(),
            });
        }
    };
    let host = url.host().ok_or_else(|| AuthorityError::NoHost {
        url: url.to_string(),
    })?;
    let mut text = format!("{scheme}://{host}");
    if let Some(port) = url.port().filter(|&p| Some(p) != default_port(scheme)) {
        text.push(':');
        text.push_str(&port.to_string());
    }
    Ok(text)
}

/// The default port of a scheme the client knows.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "ws" | "http" => Some(80),
        "wss" | "https" => Some(443),
        _ => None,
    }
}

/// Why port 0 is refused.
const PORT_ZERO: &str = "port 0 is no server's port: give the port the app listens on";

/// Whether a URL typed as `raw` has nothing where its host belongs
/// (`ws:///terminal`): the `url` crate skips the extra slashes of a web
/// scheme and would take `terminal` for the host.
pub fn has_no_host(raw: &str) -> bool {
    raw.split_once("://")
        .is_some_and(|(_, rest)| rest.starts_with(['/', '\\']))
}

/// True when `name` can be used as one directory name without escaping its parent.
pub(crate) fn is_safe_dir_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(url: &str) -> Result<String, AuthorityError> {
        Authority::from_url(&Url::parse(url).unwrap()).map(|a| a.to_string())
    }

    /// `example.com.` reaches the same server as `example.com`: one
    /// folder, one pin, one set of grants (it had a folder of its own).
    #[test]
    fn an_ipv4_mapped_address_names_the_ipv4_authority() {
        assert_eq!(
            from("ws://[::ffff:127.0.0.1]:3000/t").unwrap(),
            "127.0.0.1:3000"
        );
        assert_eq!(
            Authority::parse("[::FFFF:7f00:1]").unwrap().as_str(),
            "127.0.0.1"
        );
        // Other IPv6 addresses stay as they are.
        assert_eq!(from("ws://[::1]:3000/t").unwrap(), "[::1]:3000");
    }

    /// `example.com` is the server on port 80 (`ws://`) and on port 443
    /// (`wss://`): typed `example.com:443` or `:80`, or a URL that reaches
    /// one of those ports with the other scheme, is that authority too (it
    /// had a folder of its own: two pins and grant sets for one server).
    #[test]
    fn a_typed_web_port_names_the_same_authority() {
        for typed in [
            "example.com:443",
            "example.com:80",
            "Example.COM.:443",
            "wss://example.com:443/t",
            "ws://example.com:443/t",
            "wss://example.com:80/t",
            "http://example.com:443",
        ] {
            assert_eq!(
                Authority::parse(typed).unwrap().as_str(),
                "example.com",
                "{typed}"
            );
        }
        assert_eq!(Authority::parse("[::1]:443").unwrap().as_str(), "[::1]");
        assert_eq!(
            Authority::parse("127.0.0.1:80").unwrap().as_str(),
            "127.0.0.1"
        );
        assert_eq!(
            Authority::parse("example.com:8443").unwrap().as_str(),
            "example.com:8443"
        );
    }

    #[test]
    fn a_trailing_dot_names_the_same_authority() {
        assert_eq!(from("wss://example.com./t").unwrap(), "example.com");
        assert_eq!(
            from("ws://Example.COM.:3000/t").unwrap(),
            "example.com:3000"
        );
        assert_eq!(
            Authority::parse("example.com.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            Authority::parse("127.0.0.1.").unwrap().as_str(),
            "127.0.0.1"
        );
    }

    #[test]
    fn default_ports_are_left_out() {
        assert_eq!(from("ws://example.com/t").unwrap(), "example.com");
        assert_eq!(from("ws://example.com:80/t").unwrap(), "example.com");
        assert_eq!(from("wss://example.com:443/t").unwrap(), "example.com");
        assert_eq!(from("http://example.com:80").unwrap(), "example.com");
        assert_eq!(from("https://example.com:443").unwrap(), "example.com");
    }

    #[test]
    fn other_ports_are_kept() {
        assert_eq!(from("ws://example.com:3000/t").unwrap(), "example.com:3000");
        assert_eq!(
            from("wss://example.com:8080/t").unwrap(),
            "example.com:8080"
        );
        assert_eq!(from("http://example.com:81").unwrap(), "example.com:81");
        assert_eq!(
            from("https://example.com:8443").unwrap(),
            "example.com:8443"
        );
    }

    #[test]
    fn hosts_are_lower_cased_and_idna_encoded() {
        assert_eq!(from("wss://EXAMPLE.Com/t").unwrap(), "example.com");
        assert_eq!(
            from("http://bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            from("http://BÜCHER.example").unwrap(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(from("ws://[::1]:8080/t").unwrap(), "[::1]:8080");
        assert_eq!(from("wss://[::1]/t").unwrap(), "[::1]");
        assert_eq!(from("ws://127.0.0.1:3000").unwrap(), "127.0.0.1:3000");
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            from("file:///etc/passwd"),
            Err(AuthorityError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            from("file://host/etc/passwd"),
            Err(AuthorityError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            from("mailto:a@example.com"),
            Err(AuthorityError::UnsupportedScheme { .. })
        ));
        // Percent-encoded dots decode to a `..` host.
        assert!(from("http://%2e%2e/").is_err());
        assert!(from("http://../").is_err());
        assert!(Authority::parse("ws://").is_err());
    }

    /// Port 0 reaches no server (it means any free port to a listener):
    /// refused typed or in a URL, as `example.com:0` was taken for an
    /// authority.
    #[test]
    fn port_zero_is_refused() {
        for typed in [
            "example.com:0",
            "example.com:00",
            "[::1]:0",
            "ws://example.com:0/terminal",
            "https://example.com:0",
        ] {
            let error = Authority::parse(typed).unwrap_err().to_string();
            assert!(
                error.contains("port 0 is no server's port"),
                "{typed}: {error}"
            );
        }
        assert!(from("wss://example.com:0/t").is_err());
    }

    /// `ws:///terminal` has no host: the `url` crate read `terminal` as
    /// its host.
    #[test]
    fn a_url_without_a_host_is_refused() {
        for typed in [
            "ws:///terminal",
            "wss:////example.com/t",
            "http:///",
            "ws://\\x/t",
        ] {
            assert!(
                matches!(Authority::parse(typed), Err(AuthorityError::NoHost { .. })),
                "{typed}"
            );
        }
        assert!(!has_no_host("ws://example.com/t"));
        assert!(!has_no_host("example.com"));
    }

    #[test]
    fn typed_authorities() {
        let a = Authority::parse("Example.com:3000").unwrap();
        assert_eq!(a.as_str(), "example.com:3000");
        assert_eq!(
            Authority::parse("example.com").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            Authority::parse("[::1]:8080").unwrap().as_str(),
            "[::1]:8080"
        );
        assert_eq!(
            Authority::parse("wss://example.com:3000/terminal").unwrap(),
            a
        );
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a\0b",
            "example.com:",
            "example.com:+1",
            "example.com:99999",
            "[::1",
            "[::1]x",
            "a..b",
            ":3000",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// `example.com/` was "invalid international domain name": a path
    /// after the host is said to be one, with the authority it likely
    /// means.
    #[test]
    fn a_typed_authority_with_a_path_says_so() {
        for (typed, said) in [
            (
                "example.com/",
                "\"example.com/\" is not a valid URL or authority: an authority is host[:port], \
                 without a path: `example.com`",
            ),
            (
                "example.com:3000/terminal",
                "\"example.com:3000/terminal\" is not a valid URL or authority: an authority \
                 is host[:port], without a path: `example.com:3000`",
            ),
            (
                "/terminal",
                "\"/terminal\" is not a valid URL or authority: an authority is host[:port], \
                 without a path, such as `example.com:3000`",
            ),
        ] {
            assert_eq!(Authority::parse(typed).unwrap_err().to_string(), said);
        }
    }

    #[test]
    fn origins() {
        let o = |u: &str| origin(&Url::parse(u).unwrap());
        assert_eq!(o("ws://example.com:80/t").unwrap(), "http://example.com");
        assert_eq!(o("wss://Example.com/t").unwrap(), "https://example.com");
        assert_eq!(
            o("ws://example.com:3000/t").unwrap(),
            "http://example.com:3000"
        );
        assert_eq!(
            o("wss://example.com:80/t").unwrap(),
            "https://example.com:80"
        );
        assert_eq!(o("ws://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert!(o("file:///x").is_err());
    }

    #[test]
    fn ordering_and_hash_are_by_text() {
        let mut v = [
            Authority::parse("b.example").unwrap(),
            Authority::parse("a.example").unwrap(),
        ];
        v.sort();
        assert_eq!(v[0].as_str(), "a.example");
    }
}
