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

/// A process's memory as `/proc/<pid>/smaps_rollup` counts it, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Resident pages, shared library pages included.
    pub rss: u64,
    /// Resident pages, each shared page divided among the processes that map it.
    pub pss: u64,
    /// Pages only this process maps (its heap, stacks, private copies).
    pub private: u64,
}

impl std::ops::Add for Footprint {
    type Output = Footprint;
    fn add(self, o: Footprint) -> Footprint {
        Footprint {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            private: self.private + o.private,
        }
    }
}

/// `pid`'s memory footprint, if it runs.
pub fn footprint(pid: u32) -> Option<Footprint> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Footprint {
        rss: field("Rss:"),
        pss: field("Pss:"),
        private: field("Private_Clean:") + field("Private_Dirty:"),
    })
}

/// `pid` and every process descended from it (a webview's helper processes).
pub fn tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?;
            Some((p, ppid.parse().ok()?))
        })
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_footprint_and_is_its_own_tree() {
        let me = std::process::id();
        let f = footprint(me).expect("smaps_rollup");
        assert!(f.rss > 0 && f.private > 0 && f.pss <= f.rss, "{f:?}");
        assert_eq!(tree(me)[0], me);
    }
}
