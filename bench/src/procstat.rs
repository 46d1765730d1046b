//! CPU time and memory of a process, read from Linux's `/proc`, so the cost of xup, of Prosody and
//! of the load tool itself are measured in the same run on the same machine.

use std::{fs, io};

/// A process to watch: a pid, a pid with its children (PostgreSQL's postmaster, whose backends do
/// the work), or the load tool itself.
#[derive(Clone, Copy)]
pub enum Proc {
    Pid(u32),
    Tree(u32),
    Myself,
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Pid(pid) | Proc::Tree(pid) => format!("/proc/{pid}/{file}"),
            Proc::Myself => format!("/proc/self/{file}"),
        }
    }

    /// User plus system CPU time of all its threads, in seconds (clock-tick resolution). A tree
    /// adds its live children's, and what its children that have ended left with it.
    pub fn cpu_seconds(self) -> io::Result<f64> {
        let fields = stat_fields(&self.path("stat"))?;
        // Fields 14 to 17 of stat(5) (utime, stime, cutime, cstime) are the 12th to 15th after
        // the name.
        let ticks = |i: usize| -> io::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| io::Error::other("unexpected /proc stat format"))
        };
        let Proc::Tree(pid) = self else {
            return Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks_per_second());
        };
        let mut total = ticks(11)? + ticks(12)? + ticks(13)? + ticks(14)?;
        for entry in fs::read_dir("/proc")?.flatten() {
            // A process may end while it is read: it is then simply not counted.
            let Ok(child) = stat_fields(&format!("{}/stat", entry.path().display())) else {
                continue;
            };
            let field = |i: usize| child.get(i).and_then(|f| f.parse::<u64>().ok());
            if field(1) == Some(u64::from(pid)) {
                total += field(11).unwrap_or(0) + field(12).unwrap_or(0);
            }
        }
        Ok(total as f64 / clock_ticks_per_second())
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(self) -> io::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// Highest resident memory since start or since [`Proc::reset_peak`], in KiB.
    pub fn peak_rss_kib(self) -> io::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// Start a new peak-memory window (Linux ≥ 4.0; needs the right to write `clear_refs`).
    pub fn reset_peak(self) -> io::Result<()> {
        fs::write(self.path("clear_refs"), "5")
    }

    fn status_kib(self, key: &str) -> io::Result<u64> {
        let status = fs::read_to_string(self.path("status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {key} in /proc status")))
    }
}

/// The fields of a `/proc/…/stat` file after the command name, which may contain spaces and
/// parentheses (the fields after its last ')' do not).
fn stat_fields(path: &str) -> io::Result<Vec<String>> {
    let stat = fs::read_to_string(path)?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc stat format"))?;
    Ok(after_name.split_whitespace().map(str::to_owned).collect())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raise this process's open-file limit to its hard limit (children inherit it), so thousands of
/// connections can be open at once. Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_tool_can_read_its_own_cpu_and_memory() {
        let me = Proc::Myself;
        assert!(me.cpu_seconds().expect("cpu") >= 0.0);
        let rss = me.rss_kib().expect("rss");
        assert!(rss > 0);
        // The high-water mark read later can only be at or above any earlier reading.
        assert!(me.peak_rss_kib().expect("peak") >= rss);
    }
}
