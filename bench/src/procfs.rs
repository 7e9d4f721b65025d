//! Memory and CPU of a process, read from /proc.

use std::time::Duration;

pub use belfry_testkit::rss_kib;

/// CPU time (user + system) `pid` has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks of 100 Hz on every platform this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Raises this process's open-file limit (inherited by the hub it starts) to at least
/// `want`: the hard limit too when the process may (root), else the soft limit up to the
/// hard one. Returns the limit in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    if let Ok((soft, hard)) = Resource::NOFILE.get() {
        if soft >= want {
            return soft;
        }
        if hard < want && Resource::NOFILE.set(want, want).is_ok() {
            return want;
        }
    }
    rlimit::increase_nofile_limit(want).unwrap_or(1024)
}
