//! Facts from `/proc`: memory of a process, machine facts for the report.

use std::path::Path;

/// A `Vm*:` or `Rss*:` field of `/proc/PID/status` (`pid` 0: this process),
/// in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let path = if pid == 0 {
        "/proc/self/status".to_owned()
    } else {
        format!("/proc/{pid}/status")
    };
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident memory of a process, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// Resets the peak resident memory of a process to its current one
/// (`echo 5 > /proc/PID/clear_refs`).
pub(crate) fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    let path = if pid == 0 {
        "/proc/self/clear_refs".to_owned()
    } else {
        format!("/proc/{pid}/clear_refs")
    };
    std::fs::write(path, "5")
}

/// Facts about this machine and toolchain for the report, as (name, value).
pub(crate) fn machine_facts() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo.lines().find_map(|line| {
                let rest = line.strip_prefix("MemTotal:")?;
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|release| {
            release.lines().find_map(|line| {
                line.strip_prefix("PRETTY_NAME=")
                    .map(|name| name.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    vec![
        ("CPUs (nproc)".into(), cpus.to_string()),
        ("CPU model".into(), model),
        ("memory".into(), memory),
        ("kernel".into(), kernel),
        ("OS".into(), os),
        ("rustc".into(), command_line("rustc", &["--version"])),
        ("OpenSSH".into(), command_line("ssh", &["-V"])),
        ("curl".into(), command_line("curl", &["--version"])),
        ("C library".into(), command_line("ldd", &["--version"])),
    ]
}

/// The first line a program prints (stdout, else stderr), or `unavailable`.
pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(output) => {
            let text = if output.stdout.is_empty() {
                output.stderr
            } else {
                output.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(_) => "unavailable".into(),
    }
}

/// Today's date and time in UTC, `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let minutes = (secs % 86_400) / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `path` is an executable file.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The speed of this machine's `memcpy` (what `copy_from_slice` calls) for
/// 64 KiB, in GB/s: with the destination at the source's offset in its page,
/// then `past` bytes further (modulo a page). On AMD Zen with glibc's `rep
/// movsb`, 1 to 15 bytes further is about fifteen times slower (see
/// `terminalwire_protocol::copy`); that difference explains figures that move
/// memory on such a machine.
pub(crate) fn memcpy_gbps(past: usize) -> (f64, f64) {
    const LEN: usize = 64 * 1024;
    const PAGE: usize = 4096;
    const ROUNDS: u32 = 1000;
    let source = vec![1u8; LEN + PAGE];
    let mut destination = vec![0u8; LEN + 2 * PAGE];
    let at_page = |bytes: &[u8]| (PAGE - bytes.as_ptr() as usize % PAGE) % PAGE;
    let from = at_page(&source);
    let to = at_page(&destination);
    let mut speed = |to: usize| {
        (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                for _ in 0..ROUNDS {
                    destination[to..to + LEN]
                        .copy_from_slice(std::hint::black_box(&source[from..from + LEN]));
                    std::hint::black_box(&mut destination);
                }
                f64::from(ROUNDS) * LEN as f64 / started.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    (speed(to), speed(to + past % PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn own_memory_is_readable() {
        assert!(rss_kib(0).is_some_and(|kib| kib > 0));
        assert!(peak_rss_kib(0).is_some_and(|kib| kib > 0));
    }
}
