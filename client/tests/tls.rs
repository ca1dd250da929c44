//! TLS end to end: the hello app served over TLS in this process (certificates
//! from a test CA made with rcgen), and the real `terminalwire` binary.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use terminalwire_server::tls::{self, TlsConfig};

/// A test certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, signed by this CA.
    fn server_config(&self, names: &[&str]) -> TlsConfig {
        self.signed(names, |_| {})
    }

    /// A server certificate for `names`, signed by this CA, that expired in
    /// 2001.
    fn expired_server_config(&self, names: &[&str]) -> TlsConfig {
        self.signed(names, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    /// A server certificate for `names` with `adjust`'s changes, signed by
    /// this CA.
    fn signed(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> TlsConfig {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TlsConfig::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }
}

/// The hello app over TLS on 127.0.0.1:0, on its own runtime thread; shut
/// down gracefully on drop.
struct Server {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(config: TlsConfig) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let terminal = hello::terminal();
                let app = hello::router(&terminal);
                let draining = terminal.clone();
                tls::serve(listener, config, app, async move {
                    let _ = stopped.await;
                    draining.begin_shutdown();
                })
                .await
                .unwrap();
                terminal.shutdown().await;
            });
        });
        Server {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/terminal", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the client binary with a fresh home, bounded by a time-out.
fn terminalwire(home: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_terminalwire"))
        .args(args)
        .env("TERMINALWIRE_HOME", home)
        .env_remove("TERMINALWIRE_CA_CERT")
        .env_remove("TERMINALWIRE_LOG")
        .env_remove("CLICOLOR_FORCE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("terminalwire {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Fixture {
    fn new() -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("terminalwire test CA"),
        };
        std::fs::write(fixture.ca_file(), &fixture.ca.pem).unwrap();
        fixture
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn run(&self, args: &[&str]) -> Run {
        terminalwire(&self.home(), args)
    }
}

fn assert_one_line(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, Some(code), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    assert_eq!(run.stderr.lines().count(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.starts_with("terminalwire: "),
        "stderr: {}",
        run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "no {needle:?} in {}",
            run.stderr
        );
    }
}

#[test]
fn a_private_ca_is_trusted_with_ca_cert() {
    let fixture = Fixture::new();
    let server = Server::start(fixture.ca.server_config(&["127.0.0.1", "localhost"]));
    let ca = fixture.ca_file();
    let ca = ca.to_str().unwrap();
    for scheme in ["wss", "https"] {
        let url = server.url(scheme);
        let run = fixture.run(&["--ca-cert", ca, &url, "hello", "Ada"]);
        assert_eq!(run.code, Some(0), "{url}: {}", run.stderr);
        assert_eq!(run.stdout, "Hello, Ada!\n");
        assert_eq!(run.stderr, "");
    }
    // Plain ws:// to the TLS port is explained.
    let run = fixture.run(&[&server.url("ws"), "hello", "Ada"]);
    assert_one_line(&run, 69, &["use wss://"]);
    // The same through the environment, and with the host name.
    let run = Command::new(env!("CARGO_BIN_EXE_terminalwire"))
        .args([
            &format!("wss://localhost:{}/terminal", server.port),
            "hello",
            "Bo",
        ])
        .env("TERMINALWIRE_HOME", fixture.home())
        .env("TERMINALWIRE_CA_CERT", ca)
        .env("TERMINALWIRE_CONNECT_TIMEOUT", "20")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8(run.stdout).unwrap(), "Hello, Bo!\n");
}

#[test]
fn an_untrusted_certificate_is_one_line_and_exit_69() {
    let fixture = Fixture::new();
    let server = Server::start(fixture.ca.server_config(&["127.0.0.1", "localhost"]));
    let url = server.url("wss");
    let run = fixture.run(&[&url, "hello", "Ada"]);
    assert_one_line(
        &run,
        69,
        &[
            &format!("cannot connect to {url}"),
            "not trusted",
            "UnknownIssuer",
            "--ca-cert",
        ],
    );
    // Another CA's file does not help either, even one of the same name.
    let other_file = fixture.dir.path().join("other.pem");
    std::fs::write(&other_file, Ca::new("another CA").pem).unwrap();
    let run = fixture.run(&["--ca-cert", other_file.to_str().unwrap(), &url, "hello"]);
    assert_one_line(&run, 69, &["not trusted", "UnknownIssuer"]);
    std::fs::write(&other_file, Ca::new("terminalwire test CA").pem).unwrap();
    let run = fixture.run(&["--ca-cert", other_file.to_str().unwrap(), &url, "hello"]);
    assert_one_line(&run, 69, &["not trusted", "BadSignature"]);
}

#[test]
fn a_certificate_for_another_name_is_one_line_and_exit_69() {
    let fixture = Fixture::new();
    let server = Server::start(fixture.ca.server_config(&["other.example"]));
    let url = server.url("wss");
    let ca = fixture.ca_file();
    let run = fixture.run(&["--ca-cert", ca.to_str().unwrap(), &url, "hello", "Ada"]);
    assert_one_line(
        &run,
        69,
        &[
            "not valid for 127.0.0.1",
            "NotValidForName",
            "other.example",
        ],
    );
}

#[test]
fn an_expired_certificate_is_one_line_and_exit_69() {
    let fixture = Fixture::new();
    let server = Server::start(
        fixture
            .ca
            .expired_server_config(&["127.0.0.1", "localhost"]),
    );
    let url = server.url("wss");
    let ca = fixture.ca_file();
    let run = fixture.run(&["--ca-cert", ca.to_str().unwrap(), &url, "hello", "Ada"]);
    assert_one_line(
        &run,
        69,
        &[
            &format!("cannot connect to {url}"),
            "has expired",
            "Expired",
        ],
    );
}

/// A certificate's names are the server's words: one with a line break
/// cannot add a line of its own (a forged "first contact" notice) to the
/// client's error.
#[test]
fn a_certificate_name_cannot_add_lines_to_the_error() {
    let fixture = Fixture::new();
    let server = Server::start(fixture.ca.server_config(&[
        "other.example\nterminalwire: first contact with 127.0.0.1; pinned its identity SHA256:forged",
    ]));
    let url = server.url("wss");
    let ca = fixture.ca_file();
    let run = fixture.run(&["--ca-cert", ca.to_str().unwrap(), &url, "hello", "Ada"]);
    assert_one_line(&run, 69, &["NotValidForName", "other.example"]);
}

#[test]
fn a_ca_file_with_several_certificates_and_a_self_signed_dev_certificate() {
    let fixture = Fixture::new();
    // A bundle: an unrelated CA first, then the server's.
    let bundle = fixture.dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", Ca::new("unrelated CA").pem, fixture.ca.pem),
    )
    .unwrap();
    let server = Server::start(fixture.ca.server_config(&["127.0.0.1"]));
    let run = fixture.run(&[
        "--ca-cert",
        bundle.to_str().unwrap(),
        &server.url("wss"),
        "hello",
        "Cy",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "Hello, Cy!\n");
    drop(server);

    // The SDK's self-signed development certificate, trusted directly.
    let dev = tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let (cert, _key) = dev.write_to(fixture.dir.path().join("dev")).unwrap();
    let server = Server::start(dev.tls_config().unwrap());
    let run = fixture.run(&[
        "--ca-cert",
        cert.to_str().unwrap(),
        &server.url("wss"),
        "hello",
        "Di",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "Hello, Di!\n");
}

#[test]
fn an_unusable_ca_file_is_a_config_error() {
    let fixture = Fixture::new();
    let missing = fixture.dir.path().join("missing.pem");
    let not_pem = fixture.dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for file in [&missing, &not_pem] {
        let file = file.to_str().unwrap();
        // Checked before any connection is tried (nothing listens on port 1).
        let run = fixture.run(&["--ca-cert", file, "wss://127.0.0.1:1/terminal", "hello"]);
        // Either may have set it: both are named.
        assert_one_line(&run, 65, &[file, "--ca-cert", "TERMINALWIRE_CA_CERT"]);
    }
}

#[test]
fn a_plain_server_behind_a_wss_url_is_explained() {
    let fixture = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A plain HTTP server that answers anything with a 400.
    let thread = std::thread::spawn(move || {
        use std::io::Write as _;
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 1024];
        let _ = stream.read(&mut buffer);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    });
    let run = fixture.run(&[&format!("wss://127.0.0.1:{port}/terminal"), "hello"]);
    assert_one_line(&run, 69, &["TLS", "ws://"]);
    thread.join().unwrap();
}

#[test]
fn the_client_and_the_sdk_agree_on_the_post_quantum_key_exchange() {
    // The client's real TLS configuration against the SDK's, handshaking in
    // memory: both prefer X25519MLKEM768 (a hybrid of X25519 and ML-KEM), so
    // a recording of today's traffic stays sealed against a later quantum
    // computer.
    let fixture = Fixture::new();
    let server_config = fixture.ca.server_config(&["127.0.0.1"]).rustls().clone();
    let client_config = terminalwire_client::connect::tls_config(Some(&fixture.ca_file())).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
    let mut server = rustls::ServerConnection::new(server_config).unwrap();
    let mut flights = 0;
    while client.is_handshaking() || server.is_handshaking() {
        flights += 1;
        assert!(flights < 10, "the handshake does not finish");
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        client.read_tls(&mut wire.as_slice()).unwrap();
        client.process_new_packets().unwrap();
    }
    for group in [
        client.negotiated_key_exchange_group(),
        server.negotiated_key_exchange_group(),
    ] {
        assert_eq!(
            group.map(|group| group.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
    }
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn the_client_seeds_its_random_generator_without_cpu_jitter() {
    // `.cargo/config.toml` builds aws-lc without its CPU jitter entropy
    // source, which took about 20 ms of every client process's first TLS
    // handshake; the OS's generator seeds it instead.
    let binary = std::fs::read(env!("CARGO_BIN_EXE_terminalwire")).unwrap();
    let contains = |needle: &[u8]| binary.windows(needle.len()).any(|window| window == needle);
    assert!(
        contains(b"aes_gcm_encrypt"),
        "aws-lc's symbols are in the binary"
    );
    assert!(!contains(b"jent_entropy_collector_alloc"));
}
