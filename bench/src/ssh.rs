//! The OpenSSH baseline: Debian's `sshd`, run by the current user on a free
//! high loopback port with a temporary host key, config and authorized key.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd` and the key to log in with; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
}

/// Why the ssh baseline cannot run.
pub(crate) type Unavailable = String;

impl Sshd {
    /// Installs openssh-server if missing and allowed, then starts `sshd`
    /// with its files in `dir`.
    pub(crate) fn start(dir: &Path, install: bool) -> Result<Sshd, Unavailable> {
        if !procfs::is_executable(Path::new(SSHD)) {
            if !install {
                return Err(format!("{SSHD} is missing (install openssh-server)"));
            }
            install_openssh_server()?;
        }
        for tool in ["ssh", "scp", "ssh-keygen"] {
            if Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                return Err(format!("`{tool}` is not installed (openssh-client)"));
            }
        }
        let io = |what: &str, error: std::io::Error| format!("{what}: {error}");
        std::fs::create_dir_all(dir).map_err(|e| io("creating the sshd folder", e))?;
        let home = dir.join("home");
        std::fs::create_dir_all(&home).map_err(|e| io("creating the ssh home", e))?;
        let host_key = dir.join("host_key");
        let key = dir.join("user_key");
        for path in [&host_key, &key] {
            let output = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| io("running ssh-keygen", e))?;
            if !output.status.success() {
                return Err(format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized)
            .map_err(|e| io("writing authorized_keys", e))?;
        if rustix::process::geteuid().is_root() {
            // sshd run by root wants its privilege-separation folder.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let log = dir.join("sshd.log");
        let mut last_error = String::new();
        // A port picked free can be taken before sshd binds it: retry.
        for _ in 0..3 {
            let port = free_port().map_err(|e| io("picking a port", e))?;
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {host_key}\n\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     AuthorizedKeysFile {authorized}\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     Subsystem sftp internal-sftp\n\
                     # The login shell reads no rc files of the real home.\n\
                     SetEnv HOME={home}\n\
                     LogLevel ERROR\n",
                    host_key = host_key.display(),
                    authorized = authorized.display(),
                    home = home.display(),
                ),
            )
            .map_err(|e| io("writing sshd_config", e))?;
            let log_file = std::fs::File::create(&log).map_err(|e| io("creating the log", e))?;
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|e| io("starting sshd", e))?;
            let sshd = Sshd {
                child,
                port,
                key: key.clone(),
            };
            match sshd.wait_ready(&log) {
                Ok(()) => return Ok(sshd),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    fn wait_ready(&self, log: &Path) -> Result<(), Unavailable> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("sshd did not start: {}", log.trim()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = self
            .ssh("true")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running ssh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            Err(format!(
                "ssh login failed: {} {}",
                String::from_utf8_lossy(&output.stderr).trim(),
                log.trim()
            ))
        }
    }

    fn options(&self, port_flag: &str) -> Vec<String> {
        let mut options = vec![
            "-F".into(),
            "/dev/null".into(),
            port_flag.into(),
            self.port.to_string(),
            "-i".into(),
            self.key.display().to_string(),
        ];
        for option in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ] {
            options.push("-o".into());
            options.push(option.into());
        }
        options
    }

    /// `ssh -p PORT ... 127.0.0.1 REMOTE`.
    pub(crate) fn ssh(&self, remote: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.options("-p"))
            .arg("127.0.0.1")
            .arg(remote);
        command
    }

    /// Waits (at most 2 s) until sshd has no session process left: the
    /// ssh client exits before sshd's session has finished its cleanup,
    /// which would otherwise run during the next measurement.
    pub(crate) fn settle(&self) {
        let pid = self.child.id();
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            match std::fs::read_to_string(&children) {
                Ok(list) if list.trim().is_empty() => return,
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(_) => return,
            }
        }
    }

    /// `scp -P PORT ... FROM TO`; a remote path is written `127.0.0.1:PATH`.
    pub(crate) fn scp(&self, from: &str, to: &str) -> Command {
        let mut command = Command::new("scp");
        command.arg("-q").args(self.options("-P")).arg(from).arg(to);
        command
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn install_openssh_server() -> Result<(), Unavailable> {
    if !rustix::process::geteuid().is_root() {
        return Err(format!(
            "{SSHD} is missing and only root can install it here (apt-get install openssh-server)"
        ));
    }
    eprintln!("terminalwire-bench: installing openssh-server (apt-get)");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
    };
    let install = ["install", "-y", "-q", "openssh-server"];
    let first = apt(&install).map_err(|e| format!("running apt-get: {e}"))?;
    if first.status.success() && procfs::is_executable(Path::new(SSHD)) {
        return Ok(());
    }
    // Stale package lists: update once and retry.
    let _ = apt(&["update", "-q"]);
    let second = apt(&install).map_err(|e| format!("running apt-get: {e}"))?;
    if second.status.success() && procfs::is_executable(Path::new(SSHD)) {
        Ok(())
    } else {
        Err(format!(
            "installing openssh-server failed: {}",
            String::from_utf8_lossy(&second.stderr).trim()
        ))
    }
}
